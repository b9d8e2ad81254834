// Automatic mixed precision for the learner's forward pass ([runtime] precision): libtorch's
// autocast, per device type, as torch.autocast sets it. tch 0.24 exposes only the CUDA switch
// (at::autocast::set_enabled), not the device type or the lower-precision dtype. Compiled by
// worker/build.rs with torch-sys's flags; called from worker/src/precision.rs.
#include <ATen/autocast_mode.h>

#include <cstring>
#include <exception>

extern "C" {

// Enters autocast for `device_type` (a c10::DeviceType: 0 CPU, 1 CUDA) with `dtype` (a
// c10::ScalarType: 15 BFloat16, 5 Half) in this thread, as torch.autocast's __enter__ does:
// the previous switch and dtype go to `was_enabled` / `was_dtype` for the exit. Returns nullptr,
// or a malloc'd message when libtorch throws (freed by the caller with free).
char *cyclotron_autocast_enter(int device_type, int dtype, int *was_enabled, int *was_dtype) {
  try {
    auto device = static_cast<c10::DeviceType>(device_type);
    *was_enabled = at::autocast::is_autocast_enabled(device) ? 1 : 0;
    *was_dtype = static_cast<int>(at::autocast::get_autocast_dtype(device));
    at::autocast::set_autocast_enabled(device, true);
    at::autocast::set_autocast_dtype(device, static_cast<c10::ScalarType>(dtype));
    at::autocast::increment_nesting();
    return nullptr;
  } catch (const std::exception &e) {
    return strdup(e.what());
  }
}

// Leaves it, as __exit__ does: the outermost exit drops the cache of weights cast to the lower
// precision (they change at the next optimiser step), then the previous switch and dtype return.
char *cyclotron_autocast_exit(int device_type, int was_enabled, int was_dtype) {
  try {
    auto device = static_cast<c10::DeviceType>(device_type);
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(device, was_enabled != 0);
    at::autocast::set_autocast_dtype(device, static_cast<c10::ScalarType>(was_dtype));
    return nullptr;
  } catch (const std::exception &e) {
    return strdup(e.what());
  }
}

}  // extern "C"
