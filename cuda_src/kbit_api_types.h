/* kbit-workbench: the two CUDA runtime types in the families' C APIs (cudaError_t, cudaStream_t).
 * workbench/_native/cuda_launch.pyx compiles against these headers on machines without the CUDA toolkit
 * (CI builds it): it defines KBIT_API_ONLY and gets the types' ABI, an int-sized enum and an opaque stream. */
#ifndef KBIT_API_TYPES_H
#define KBIT_API_TYPES_H

#ifdef KBIT_API_ONLY
typedef int cudaError_t;
typedef struct CUstream_st* cudaStream_t;
#else
#include <cuda_runtime.h>
#endif

#endif
