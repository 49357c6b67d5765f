/* kbit-workbench: the element-type codes every family's C API takes (dtype arguments); workbench/wire.py
 * holds the same values for the Python side (tests/test_wire_constants.py checks them). */
#ifndef KBIT_DTYPES_H
#define KBIT_DTYPES_H

#define KBIT_F32 0
#define KBIT_F16 1
#define KBIT_BF16 2

#endif
