/* kbit-workbench: host-side helpers shared by the kernel families (internal, not part of the C API). */
#ifndef KBIT_DEVICE_H
#define KBIT_DEVICE_H

#include <cuda_runtime.h>

/* Streaming multiprocessors of the current device, cached per device (132, an H100's, if the query fails). */
static inline int kbit_num_sms(void) {
    static int cache[64] = {0};
    int dev = 0;
    cudaGetDevice(&dev);
    if (dev < 0 || dev >= 64) return 132;
    if (cache[dev] == 0) {
        int v = 0;
        cache[dev] = (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess && v > 0) ? v : 132;
    }
    return cache[dev];
}

#endif
