// RF_HOST_DEVICE marks element math that both g++ (the CPU kernels, the CUDA kernels' host
// reference) and nvcc (the CUDA kernels) compile, so both sides share one definition. This is a
// compiler switch, not a build switch: the CUDA build options live in cuda/ and CMake.
#pragma once

#if defined(__CUDACC__)
#define RF_HOST_DEVICE __host__ __device__
#else
#define RF_HOST_DEVICE
#endif
