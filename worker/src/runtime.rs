//! What a job spec says about the process it runs in: libtorch's threads, the device, and the
//! store settings (checkpoints, and `s3://` weights).

use cyclotron_core::checkpoint::{S3Options, StoreOptions};
use cyclotron_core::spec::{DeviceSpec, JobSpec};
use tch::Device;

use crate::error::{Error, Result};

/// libtorch's intra-op threads: `[runtime] threads`, or the machine's cores.
pub fn set_threads(spec: &JobSpec) {
    let threads =
        spec.runtime.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    tch::set_num_threads(threads as i32);
}

/// The device the spec asks for.
pub fn device(spec: &JobSpec) -> Result<Device> {
    match spec.runtime.device {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Auto => Ok(Device::cuda_if_available()),
        DeviceSpec::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        DeviceSpec::Cuda => Err(Error::Invalid {
            what: "runtime.device".into(),
            message: "\"cuda\" was asked for but no CUDA device is visible; use \"auto\" or \"cpu\"".into(),
        }),
    }
}

/// The `[checkpoint]` section's transfer and S3 settings (also used to read `s3://` weights).
pub fn store_options(spec: &JobSpec) -> StoreOptions {
    let c = &spec.checkpoint;
    StoreOptions {
        multipart_threshold: c.multipart_threshold_mb << 20,
        s3: S3Options {
            endpoint: c.s3_endpoint.clone(),
            region: c.s3_region.clone(),
            allow_http: c.s3_allow_http,
            ..Default::default()
        },
        ..Default::default()
    }
}
