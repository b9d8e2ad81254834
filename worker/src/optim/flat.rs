//! Where the optimiser keeps its tensors: one flat buffer per layer group, dtype and device for
//! the parameters, and (allocated on first use) one each for the gradients, the momentum or Adam
//! first moment, and the Adam second moment. Parameter `i` owns the same slot in all of them, so a
//! contiguous run of parameters is one contiguous range of every buffer.
//!
//! The parameters become views into their buffer (`set_data`): the model, the checkpoint code and
//! everything else keep seeing the same variables with the same names and shapes, while the update
//! writes one buffer. Code that gives a variable other storage (a second optimiser over the same
//! model, as the LR-range test makes) is noticed by [`attached`] before the next update, and the
//! variable is moved back into its slot with its current values.

use tch::{Device, Kind, Tensor};

use crate::memory_format::{channels_last, is_channels_last, is_nhwc_only};

/// Slots start on multiples of this many elements (64 bytes of `f32`), so every parameter is
/// aligned for vector loads. The gaps stay zero in every buffer, which every update keeps zero.
const ALIGN: i64 = 16;

/// A parameter's place: buffer `buf`, elements `off..off + numel`, viewed as `shape`; in NHWC
/// order when `channels_last` (a 4-D weight laid out channels-last, [`crate::memory_format`]), so
/// the parameter keeps its layout as a view, and its gradient and state share the order.
#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub buf: usize,
    pub off: i64,
    pub numel: i64,
    pub shape: Vec<i64>,
    pub channels_last: bool,
}

/// One layer group's tensors of one dtype on one device.
#[derive(Debug)]
pub(super) struct Buffer {
    pub group: usize,
    pub kind: Kind,
    pub device: Device,
    len: i64,
    /// Parameter indices, in slot order.
    pub members: Vec<usize>,
    pub p: Option<Tensor>,
    pub g: Option<Tensor>,
    pub m: Option<Tensor>,
    pub v: Option<Tensor>,
}

impl Buffer {
    /// Whether the fused CPU loops can update this buffer.
    pub fn cpu_f32(&self) -> bool {
        self.device == Device::Cpu && self.kind == Kind::Float
    }

    pub fn zeros(&self) -> Tensor {
        Tensor::zeros([self.len], (self.kind, self.device))
    }
}

/// Which of a buffer's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    M,
    V,
}

impl Buffer {
    /// The first or second moment buffer, allocated (zeros) on first use. Called once per
    /// parameter per step, so nothing is allocated when the buffer exists.
    pub fn state(&mut self, part: Part) -> &Tensor {
        let (len, kind, device) = (self.len, self.kind, self.device);
        let t = match part {
            Part::M => &mut self.m,
            Part::V => &mut self.v,
        };
        t.get_or_insert_with(|| Tensor::zeros([len], (kind, device)))
    }
}

/// The buffers and each parameter's slot: parameters grouped by (layer group, dtype, device) in
/// order of first appearance, each group's parameters in the order given.
pub(super) fn layout(params: &[(usize, &Tensor)]) -> (Vec<Buffer>, Vec<Slot>) {
    let mut buffers: Vec<Buffer> = vec![];
    let mut slots = Vec::with_capacity(params.len());
    for (i, &(group, t)) in params.iter().enumerate() {
        let (kind, device) = (t.kind(), t.device());
        let buf = match buffers.iter().position(|b| b.group == group && b.kind == kind && b.device == device)
        {
            Some(b) => b,
            None => {
                buffers.push(Buffer {
                    group,
                    kind,
                    device,
                    len: 0,
                    members: vec![],
                    p: None,
                    g: None,
                    m: None,
                    v: None,
                });
                buffers.len() - 1
            }
        };
        let b = &mut buffers[buf];
        let numel = t.numel() as i64;
        slots.push(Slot { buf, off: b.len, numel, shape: t.size(), channels_last: is_nhwc_only(t) });
        b.members.push(i);
        b.len += (numel + ALIGN - 1) / ALIGN * ALIGN;
    }
    (buffers, slots)
}

/// `flat`'s elements of `slot`, shaped like the parameter (and strided like it).
pub(super) fn view(flat: &Tensor, slot: &Slot) -> Tensor {
    let run = flat.narrow(0, slot.off, slot.numel);
    if slot.channels_last {
        let s = &slot.shape;
        run.view([s[0], s[2], s[3], s[1]]).permute([0, 3, 1, 2])
    } else {
        run.view(slot.shape.as_slice())
    }
}

/// Whether `t`'s storage is `slot` of `flat`, in the slot's order (a variable given other
/// storage, or another layout, is not).
pub(super) fn attached(t: &Tensor, flat: &Tensor, slot: &Slot) -> bool {
    let start = flat.data_ptr() as usize + slot.off as usize * flat.kind().elt_size_in_bytes();
    t.data_ptr() as usize == start && in_slot_order(t, slot)
}

/// Whether `t`'s elements lie densely in memory in `slot`'s order (NCHW, or NHWC).
pub(super) fn in_slot_order(t: &Tensor, slot: &Slot) -> bool {
    if slot.channels_last {
        is_channels_last(t)
    } else {
        t.is_contiguous()
    }
}

/// `t` (a gradient of `slot`'s parameter) as a dense tensor whose memory is in the slot's order:
/// `t` itself when it is, else a copy.
pub(super) fn dense_in_slot_order(t: &Tensor, slot: &Slot) -> Tensor {
    match (in_slot_order(t, slot), slot.channels_last) {
        (true, _) => t.shallow_clone(),
        (false, true) => channels_last(t),
        (false, false) => t.contiguous(),
    }
}

/// Copy `t`'s values into `slot` of `flat` and make `t` a view of it. Call without gradient
/// recording and while nothing else reads `t`.
pub(super) fn attach(t: &mut Tensor, flat: &Tensor, slot: &Slot) {
    let mut into = view(flat, slot);
    into.copy_(&t.detach());
    t.set_data(&into);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_aligned_and_grouped_by_group_and_dtype() {
        let a = Tensor::zeros([3, 5], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([7], (Kind::Double, Device::Cpu));
        let c = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        let d = Tensor::zeros([17], (Kind::Float, Device::Cpu));
        let (buffers, slots) = layout(&[(0, &a), (0, &b), (1, &c), (0, &d)]);
        assert_eq!(buffers.len(), 3, "group 0 f32, group 0 f64, group 1 f32");
        assert_eq!(buffers[0].members, vec![0, 3]);
        assert_eq!((slots[0].buf, slots[0].off, slots[0].numel), (0, 0, 15));
        assert_eq!((slots[3].buf, slots[3].off, slots[3].numel), (0, 16, 17));
        assert_eq!(buffers[0].len, 48);
        assert_eq!((slots[1].buf, slots[2].buf), (1, 2));
        assert_eq!(slots[0].shape, vec![3, 5]);
    }

    #[test]
    fn an_attached_tensor_is_a_view_until_given_other_storage() {
        let mut t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).set_requires_grad(true);
        let (buffers, slots) = layout(&[(0, &t)]);
        let flat = buffers[0].zeros();
        attach(&mut t, &flat, &slots[0]);
        assert!(attached(&t, &flat, &slots[0]));
        assert!(t.requires_grad(), "still a trainable variable");
        assert_eq!(flat.narrow(0, 0, 3), Tensor::from_slice(&[1.0f32, 2.0, 3.0]));
        let _ = tch::no_grad(|| flat.shallow_clone().fill_(4.0));
        assert_eq!(t.double_value(&[1]), 4.0, "writes to the buffer are writes to the variable");
        t.set_data(&Tensor::zeros([3], (Kind::Float, Device::Cpu)));
        assert!(!attached(&t, &flat, &slots[0]));
    }
}
