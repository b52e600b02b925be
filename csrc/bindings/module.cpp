// The Python module behind fastbert._C and fastbert._C_cuda. It holds no functions: each op registers
// torch ops fastbert_C::<name> from its own csrc/bindings/<op>.cpp (TORCH_LIBRARY_FRAGMENT), and
// importing the module runs those registrations. Python calls them as torch.ops.fastbert_C.<name>.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}
