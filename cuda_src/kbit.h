/* kbit-workbench: the extern "C" API of every CUDA op family, in one header.
 * Each family has its own header and shared library (cuda_src/<family>.cu -> libkbit_<family>.so);
 * a family whose header is absent is simply not declared here. */
#ifndef KBIT_H
#define KBIT_H

#include "kbit_quant.h"

#if defined(__has_include)
#if __has_include("kbit_optim.h")
#include "kbit_optim.h"
#endif
#if __has_include("kbit_int8.h")
#include "kbit_int8.h"
#endif
#if __has_include("kbit_matmul.h")
#include "kbit_matmul.h"
#endif
#if __has_include("kbit_kbit.h")
#include "kbit_kbit.h"
#endif
#if __has_include("kbit_kbit_affine.h")
#include "kbit_kbit_affine.h"
#endif
#endif

#endif
