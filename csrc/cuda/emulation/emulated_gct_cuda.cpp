// The CUDA kernels of gct_cuda.cu compiled as host C++ for the emulator.
#include "../gct_cuda.cu"
