from workbench._compat import guard_simulator_swap

guard_simulator_swap()   # before any kernel runs under the simulator (see workbench/_compat.py)
