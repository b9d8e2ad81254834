use cyclotron_core::spec::Precision;
use tch::{nn, nn::Module, Device, Kind, Tensor};

use super::Autocast;

fn matmul_kind() -> Kind {
    let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
    a.matmul(&a).kind()
}

#[test]
fn the_scope_computes_matmuls_in_bf16_and_restores_fp32_when_it_ends() {
    assert_eq!(matmul_kind(), Kind::Float);
    {
        let outer = Autocast::enter(Precision::Bf16, Device::Cpu).unwrap();
        assert!(outer.is_some());
        assert_eq!(matmul_kind(), Kind::BFloat16);
        // losses stay in fp32 (autocast's fp32 list)
        let logits = Tensor::randn([8, 10], (Kind::Float, Device::Cpu))
            .matmul(&Tensor::eye(10, (Kind::Float, Device::Cpu)));
        assert_eq!(logits.kind(), Kind::BFloat16);
        let target = Tensor::zeros([8], (Kind::Int64, Device::Cpu));
        assert_eq!(logits.cross_entropy_for_logits(&target).kind(), Kind::Float);
        {
            let _inner = Autocast::enter(Precision::Bf16, Device::Cpu).unwrap();
            assert_eq!(matmul_kind(), Kind::BFloat16);
        }
        // leaving a nested scope keeps the outer one on
        assert_eq!(matmul_kind(), Kind::BFloat16);
    }
    assert_eq!(matmul_kind(), Kind::Float);
    // fp32 enters nothing
    assert!(Autocast::enter(Precision::Fp32, Device::Cpu).unwrap().is_none());
    assert_eq!(matmul_kind(), Kind::Float);
}

#[test]
fn fp16_is_refused_with_what_to_use() {
    let err = Autocast::enter(Precision::Fp16, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("loss scaling") && err.contains("bf16"), "{err}");
    assert_eq!(matmul_kind(), Kind::Float);
}

#[test]
fn each_scope_casts_the_weights_as_they_are_now_not_as_an_earlier_scope_cached_them() {
    let vs = nn::VarStore::new(Device::Cpu);
    let lin = nn::linear(vs.root(), 3, 1, nn::LinearConfig { bias: false, ..Default::default() });
    let x = Tensor::ones([1, 3], (Kind::Float, Device::Cpu));
    let y1 = Autocast::run(Precision::Bf16, Device::Cpu, || Ok(lin.forward(&x))).unwrap();
    let _ = tch::no_grad(|| lin.ws.shallow_clone().fill_(0.5));
    let y2 = Autocast::run(Precision::Bf16, Device::Cpu, || Ok(lin.forward(&x))).unwrap();
    assert_eq!(y2.kind(), Kind::BFloat16);
    // 3 × 0.5 is exact in bf16: the new weights, not a cached cast of the old ones
    assert_eq!(y2.to_kind(Kind::Float).double_value(&[0, 0]), 1.5);
    assert_ne!(y1.to_kind(Kind::Float).double_value(&[0, 0]), 1.5);
    // the parameter itself stays fp32 and its gradient comes back in fp32
    assert_eq!(lin.ws.kind(), Kind::Float);
    let loss = Autocast::run(Precision::Bf16, Device::Cpu, || Ok(lin.forward(&x).sum(Kind::Float))).unwrap();
    loss.backward();
    assert_eq!(lin.ws.grad().kind(), Kind::Float);
    assert_eq!(lin.ws.grad().sum(Kind::Float).double_value(&[]), 3.0);
}

#[test]
fn a_cpu_without_native_bf16_is_warned_about_and_fp32_never_is() {
    assert_eq!(super::slow_precision_warning(Precision::Fp32, Device::Cpu), None);
    let native = super::cpu_has_native_bf16();
    let warning = super::slow_precision_warning(Precision::Bf16, Device::Cpu);
    assert_eq!(warning.is_some(), native == Some(false), "{native:?} {warning:?}");
}

#[test]
fn auto_is_bf16_where_it_is_native_and_fp32_elsewhere() {
    let (cpu, why) = super::resolve(Precision::Auto, Device::Cpu);
    let expect = if super::cpu_has_native_bf16() == Some(true) { Precision::Bf16 } else { Precision::Fp32 };
    assert_eq!(cpu, expect, "{why}");
    assert_eq!(super::slow_precision_warning(cpu, Device::Cpu), None, "auto never chooses the slow path");
    assert_eq!(super::resolve(Precision::Auto, Device::Cuda(0)).0, Precision::Bf16);
    for p in [Precision::Fp32, Precision::Bf16] {
        assert_eq!(super::resolve(p, Device::Cpu).0, p, "an explicit choice is kept");
    }
}
