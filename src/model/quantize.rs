//! The `fast_quantize_linear` tract transform: ONNX `QuantizeLinear` to u8, computed with the
//! same rounding as tract's own op in a loop the compiler vectorises.
//!
//! tract 0.23.9 quantises value by value through a branchy `round_ties_to_even` and a
//! saturating float-to-int cast (`tract_core::ops::quant::quantize_linear_f32_u8`), which stay
//! scalar: under tract's profiler 0.12 ms for each of the two [120, 512] activations the int8
//! window part of the head quantises, 0.03 ms with this op. This op gives the same u8 for every
//! input (tested against tract's function below, ties and out-of-range values included), so a
//! model's outputs do not change by a bit (`tests/model.rs`). Measured with `bench --stage S
//! --runs 1000 [--transform=-fast_quantize_linear]`, three times each way (2026-12-03, x86):
//! `tspm_window.int8` 1.89-1.94 -> 1.74-1.77 ms, `tspm_second.int8` 1.61-1.75 -> 1.54-1.65 ms.

use tract_core::internal::*;
use tract_core::ops::element_wise::{ElementWiseMiniOp, ElementWiseOp};
use tract_core::ops::quant::QuantizeLinearU8;
use tract_core::transform::ModelTransform;

/// The transform's name, as `Model::load` and `bench --transform` take it.
pub const NAME: &str = "fast_quantize_linear";

/// 1.5 · 2^23: adding it moves any |v| < 2^22 to where the float spacing is 1, so the add
/// itself rounds v to the nearest integer, ties to even (the FPU's default mode).
const ROUND_MAGIC: f32 = 12_582_912.0;

/// 2^23: an integer n in [0, 2^23) added to it is stored exactly, with n in the mantissa.
const INT_MAGIC: f32 = 8_388_608.0;

#[derive(Debug)]
struct FastQuantizeLinear;

impl ModelTransform for FastQuantizeLinear {
    fn name(&self) -> StaticName {
        NAME.into()
    }

    fn transform(&self, model: &mut TypedModel) -> TractResult<()> {
        Rewriter::<()>::default()
            .with_rule_for(NAME, swap_quantize)
            .rewrite(&(), model)
    }
}

tract_core::register_simple_model_transform!("fast_quantize_linear", FastQuantizeLinear);

fn swap_quantize(
    _ctx: &(),
    model: &TypedModel,
    node: &TypedNode,
    name: &str,
    op: &ElementWiseOp,
) -> TractResult<Option<TypedModelPatch>> {
    let Some(q) = op.0.downcast_ref::<QuantizeLinearU8>() else {
        return Ok(None);
    };
    if model.outlet_fact(node.inputs[0])?.datum_type != f32::datum_type() {
        return Ok(None);
    }
    let fast = QuantizeU8 {
        scale_bits: q.scale.to_bits(),
        zero_point: q.zero_point,
    };
    TypedModelPatch::replace_single_op(
        model,
        node,
        &node.inputs,
        ElementWiseOp(Box::new(fast), op.1),
    )
    .map(|p| Some(p.with_context(name)))
}

/// `QuantizeLinear` f32 → u8 with tract's parameters: `scale` is the reciprocal of ONNX's
/// (tract multiplies), held as bits so the op can be `Eq`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct QuantizeU8 {
    scale_bits: u32,
    zero_point: u8,
}

impl ElementWiseMiniOp for QuantizeU8 {
    fn name(&self) -> String {
        "FastQuantizeLinearU8".into()
    }

    fn output_type(&self, input_type: DatumType) -> Option<DatumType> {
        (input_type == f32::datum_type()).then(u8::datum_type)
    }

    fn eval_out_of_place(&self, t: &Tensor, _out_dt: Option<DatumType>) -> TractResult<Tensor> {
        let mut out = Tensor::zero::<u8>(t.shape())?;
        quantize_u8(
            t.try_as_plain_ram()?.as_slice::<f32>()?,
            out.try_as_plain_ram_mut()?.as_slice_mut::<u8>()?,
            f32::from_bits(self.scale_bits),
            self.zero_point,
        );
        Ok(out)
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "scale: {} zero_point: {}",
            f32::from_bits(self.scale_bits),
            self.zero_point
        )])
    }
}

/// `y = clamp(round_ties_even(x · scale) + zero_point, 0, 255)`, as tract computes it, with no
/// branch and no saturating float-to-int cast in the loop (either keeps it scalar). Clamping
/// to [-zero_point, 255 - zero_point] before rounding keeps |v| far below 2^22, where the
/// magic constant rounds exactly, and changes no result; NaN becomes the zero point, as in
/// tract (NaN as i32 is 0). Adding 2^23 to the exact integer in [0, 255] leaves it in the
/// float's low mantissa bits, which the last line reads.
fn quantize_u8(xs: &[f32], ys: &mut [u8], scale: f32, zero_point: u8) {
    let zp = zero_point as f32;
    let (lo, hi) = (-zp, 255.0 - zp);
    for (x, y) in xs.iter().zip(ys.iter_mut()) {
        let v = x * scale;
        let v = if v.is_nan() { 0.0 } else { v.clamp(lo, hi) };
        let r = (v + ROUND_MAGIC) - ROUND_MAGIC;
        *y = ((r + zp) + INT_MAGIC).to_bits() as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_core::ops::quant::quantize_linear_f32_u8;

    /// Every value class tract's rounding distinguishes: exact ties (k + 0.5) on both sides of
    /// zero, neighbours of ties, the clamp edges, huge and tiny values, infinities, NaN.
    fn probe_values(scale: f32, zp: u8) -> Vec<f32> {
        let mut xs = Vec::new();
        for k in -300..300 {
            for frac in [0.0f32, 0.5, -0.5, 0.25, 0.4999999, 0.5000001, 0.75] {
                let v = k as f32 + frac;
                xs.push(v / scale);
                xs.push(f32::from_bits((v / scale).to_bits().wrapping_add(1)));
                xs.push(f32::from_bits((v / scale).to_bits().wrapping_sub(1)));
            }
        }
        let mut state = 0x2545_f491_u32;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            xs.push((state as f32 / u32::MAX as f32 - 0.5) * 600.0 / scale);
        }
        xs.extend([
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            // tract's own function overflows past |x · scale| = 2^31 - 256 (below).
            2.0e9 / scale,
            -2.0e9 / scale,
            f32::NAN,
            (zp as f32 - 0.5) / scale,
            -(zp as f32 + 0.5) / scale,
        ]);
        xs
    }

    #[test]
    fn quantize_u8_gives_tracts_bytes_for_every_value_class() {
        for (scale, zp) in [
            (1.0f32, 0u8),
            (37.5, 128),
            (0.013, 3),
            (255.0, 255),
            (4.2, 77),
        ] {
            let xs = probe_values(scale, zp);
            let mut ys = vec![0u8; xs.len()];
            quantize_u8(&xs, &mut ys, scale, zp);
            for (x, y) in xs.iter().zip(&ys) {
                let expected = quantize_linear_f32_u8(*x, scale, zp as i32);
                assert_eq!(*y, expected, "x = {x:e}, scale {scale}, zero point {zp}");
            }
        }
    }

    #[test]
    fn infinities_clamp_to_the_u8_range() {
        // tract's own function overflows on ±inf (i32::MAX + zero point); ours saturates.
        let mut ys = [0u8; 2];
        quantize_u8(&[f32::INFINITY, f32::NEG_INFINITY], &mut ys, 1.0, 128);
        assert_eq!(ys, [255, 0]);
    }

    #[test]
    fn the_transform_is_registered_and_swaps_tracts_quantize_keeping_its_bytes() {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([64])).unwrap();
        let op = QuantizeLinearU8 {
            scale: 1.0 / 0.05,
            zero_point: 120,
        };
        let q = model
            .wire_node("q", ElementWiseOp(Box::new(op), None), &[x])
            .unwrap();
        model.select_output_outlets(&q).unwrap();
        let input: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) * 0.2371).collect();
        let run = |m: &TypedModel| {
            let plan = m.clone().into_runnable().unwrap();
            let out = plan.run(tvec!(tensor1(&input).into())).unwrap();
            out[0].clone().into_tensor()
        };
        let before = run(&model);
        let transform = tract_core::transform::get_transform(NAME).unwrap();
        transform
            .expect("registered with tract")
            .transform(&mut model)
            .unwrap();
        let swapped = model.nodes().iter().any(|n| {
            n.op_as::<ElementWiseOp>()
                .is_some_and(|e| e.0.downcast_ref::<QuantizeU8>().is_some())
        });
        assert!(swapped, "no QuantizeLinearU8 was swapped: {model}");
        assert_eq!(run(&model), before);
    }
}
