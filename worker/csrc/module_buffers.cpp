// The buffers of a TorchScript module (BatchNorm running statistics and anything registered with
// register_buffer), which tch 0.24 does not expose (it lists named_parameters only). Compiled by
// worker/build.rs against the same libtorch headers torch-sys uses; called from
// worker/src/models/torchscript.rs.
#include <torch/script.h>

#include <cstring>
#include <exception>

extern "C" {

// Calls `f(data, name, tensor)` for every buffer of `module` (a torch::jit::Module*, as tch's
// CModule holds it), recursively, named as in state_dict ("layer1.0.bn1.running_mean"). `tensor`
// is a new torch::Tensor* sharing the buffer's storage; the callee owns it. Returns nullptr, or a
// malloc'd message (freed by the caller with free) when libtorch throws.
char *cyclotron_module_named_buffers(void *module, void *data,
                                     void (*f)(void *, const char *, void *)) {
  try {
    auto *m = static_cast<torch::jit::Module *>(module);
    for (const auto &b : m->named_buffers(/*recurse=*/true)) {
      f(data, b.name.c_str(), new torch::Tensor(b.value));
    }
    return nullptr;
  } catch (const std::exception &e) {
    return strdup(e.what());
  }
}

}  // extern "C"
