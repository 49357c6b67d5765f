/* kbit-workbench: helpers shared by the kernel families (internal, not part of the C API). */
#ifndef KBIT_DEVICE_H
#define KBIT_DEVICE_H

#include <cuda_runtime.h>
#include <stdint.h>

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

#ifdef __CUDACC__
/* A warp's output, S 16-byte slots per lane (S = 2, 4 or 8: 32S slots contiguous at dst), written so that every
 * store instruction covers 512 contiguous bytes: the slots go through the warp's stage st[32 S] in shared memory,
 * swizzled so neither the writes (lane l, slot q) nor the reads (slot 32q + l) have bank conflicts. A lane storing
 * its own S slots leaves each 32-byte sector half written per store, which made L2, not DRAM, bound the k-bit
 * dequantizer on the H200 (reports/kbit-h200/). Every lane of the warp must call it. */
template <int S>
static __device__ __forceinline__ void kbit_store_warp_staged(uint4* dst, const uint4* v, uint4* st, int lane) {
    static_assert(S == 2 || S == 4 || S == 8, "S: 2, 4 or 8 slots per lane");
    constexpr int shift = S == 8 ? 0 : (S == 4 ? 1 : 2);   /* 8 consecutive slots of a phase: distinct banks */
#pragma unroll
    for (int q = 0; q < S; q++) st[lane * S + (q ^ ((lane >> shift) & (S - 1)))] = v[q];
    __syncwarp();
#pragma unroll
    for (int q = 0; q < S; q++) {
        const int ch = 32 * q + lane, t = ch / S;
        __stcs(dst + ch, st[t * S + ((ch % S) ^ ((t >> shift) & (S - 1)))]);
    }
}
#endif

#endif
