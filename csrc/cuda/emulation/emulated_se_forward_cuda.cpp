// The CUDA kernels of se_forward_cuda.cu compiled as host C++ for the emulator.
#include "../se_forward_cuda.cu"
