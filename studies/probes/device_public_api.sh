export PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/tmp/numba_cache
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/device.txt
python3 -c "import torch, numba; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numba', numba.__version__)" | tee -a $OUT/device.txt
for f in quant int8 optim; do timeout 200 python3 -m workbench.cuda_build $f --force 2>&1 | tail -1; done
timeout 300 python3 -m pytest -q --tb=line -p no:cacheprovider -p no:warnings -p no:logging -m gpu tests/test_gpu_quant.py tests/test_optim_gpu.py tests/test_int8_gpu.py tests/test_cuda_graphs.py tests/test_op_registry.py > $OUT/pytest_gpu.txt 2>&1
grep -E "passed|failed|^FAILED|Error" $OUT/pytest_gpu.txt | tail -15
timeout 150 python3 -m studies.bench.public_call --out $OUT 2>&1 | grep -v -i warn | tail -9
