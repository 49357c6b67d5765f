// A wgmma loop that ptxas serializes (two accumulator sets, the other read after wait_group 1): the build must
// refuse it (tests/test_cuda_build.py).
#include <stdint.h>
__device__ __forceinline__ void mma(float (&d)[4], uint32_t a, uint64_t b) {
    asm volatile("wgmma.fence.sync.aligned;\n"
                 "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 {%0,%1,%2,%3}, {%4,%4,%4,%4}, %5, 0, 1, 1, 0;\n"
                 "wgmma.commit_group.sync.aligned;\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3]) : "r"(a), "l"(b));
}
extern "C" __global__ void ser(const uint32_t* src, float* out, int n) {
    float d[2][4], acc = 0.0f;
    for (int c = 0; c < n; c += 2) {
#pragma unroll
        for (int u = 0; u < 2; ++u) {
            mma(d[u], src[c + u], 0);
            asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
            acc += d[u ^ 1][0] + d[u ^ 1][3];
        }
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    out[threadIdx.x] = acc;
}
