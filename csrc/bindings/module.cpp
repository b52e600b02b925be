// The Python module behind fastbert._C and fastbert._C_cuda. It holds no functions: each op registers
// torch ops fastbert_C::<name> from its own csrc/bindings/<op>.cpp (TORCH_LIBRARY_FRAGMENT), and
// loading the module runs those registrations. Python calls them as torch.ops.fastbert_C.<name>.
// Plain CPython API rather than <torch/extension.h>: that header alone costs ~45 s of compile time.
#include <Python.h>

#define FASTBERT_STR(x) #x
#define FASTBERT_NAME(x) FASTBERT_STR(x)
#define FASTBERT_CAT(a, b) a##b
#define FASTBERT_INIT(name) FASTBERT_CAT(PyInit_, name)

static PyModuleDef fastbert_module = {PyModuleDef_HEAD_INIT, FASTBERT_NAME(TORCH_EXTENSION_NAME), nullptr, 0,
                                      nullptr};

PyMODINIT_FUNC FASTBERT_INIT(TORCH_EXTENSION_NAME)() { return PyModule_Create(&fastbert_module); }
