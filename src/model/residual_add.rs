//! The `unfused_residual_add` tract transform: keeps the residual add after an attention's
//! weights-times-values product out of that product.
//!
//! tract 0.23.9 fuses `x + P·V` into the matrix product as an "add to matrix" step, and on x86
//! that step reads the addend tile by tile across rows (its kernels hold a tile's columns in
//! registers, and there a column of `x` is strided by a whole row). Under tract's profiler the
//! head's window part spends 0.18 ms in each of its two fused [2, 60, 60] x [2, 60, 512]
//! products where the same product alone takes ~0.07 ms. This transform swaps such an add
//! for [`ResidualAdd`], which tract cannot fuse: the product runs on its plain path and the add
//! is one contiguous pass. Each output is computed as before (the product's f32 result plus
//! `x`, one rounding), so a model's outputs do not change by a bit (`tests/model.rs`).
//! Only products of two computed operands (attention) are concerned: a product with a weight
//! keeps its fused bias and residual, which tract reads along the contiguous axis.

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::math::Add;
use tract_core::transform::ModelTransform;

/// The transform's name, as `Model::load` and `bench --transform` take it.
pub const NAME: &str = "unfused_residual_add";

#[derive(Debug)]
struct UnfusedResidualAdd;

impl ModelTransform for UnfusedResidualAdd {
    fn name(&self) -> StaticName {
        NAME.into()
    }

    fn transform(&self, model: &mut TypedModel) -> TractResult<()> {
        Rewriter::<()>::default()
            .with_rule_for(NAME, swap_add)
            .rewrite(&(), model)
    }
}

tract_core::register_simple_model_transform!("unfused_residual_add", UnfusedResidualAdd);

/// Whether `outlet` comes (through shape-only ops) from a matrix product of two computed
/// operands that has no other reader.
fn from_activation_product(model: &TypedModel, mut outlet: OutletId) -> TractResult<bool> {
    loop {
        let node = model.node(outlet.node);
        if model.outlet_successors(outlet).len() != 1 {
            return Ok(false);
        }
        if node.op_is::<AxisOp>() && node.inputs.len() == 1 {
            outlet = node.inputs[0];
            continue;
        }
        if !node.op_is::<EinSum>() || node.inputs.len() != 2 {
            return Ok(false);
        }
        for i in &node.inputs {
            if model.outlet_fact(*i)?.konst.is_some() {
                return Ok(false);
            }
        }
        return Ok(true);
    }
}

fn swap_add(
    _ctx: &(),
    model: &TypedModel,
    node: &TypedNode,
    name: &str,
    op: &TypedBinOp,
) -> TractResult<Option<TypedModelPatch>> {
    if !op.0.is::<Add>() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let (a, b) = (
        model.outlet_fact(node.inputs[0])?,
        model.outlet_fact(node.inputs[1])?,
    );
    let same = a.datum_type == f32::datum_type()
        && b.datum_type == f32::datum_type()
        && a.shape == b.shape
        && a.shape.as_concrete().is_some()
        && a.konst.is_none()
        && b.konst.is_none();
    if !same {
        return Ok(None);
    }
    if !(from_activation_product(model, node.inputs[0])?
        || from_activation_product(model, node.inputs[1])?)
    {
        return Ok(None);
    }
    TypedModelPatch::replace_single_op(model, node, &node.inputs, ResidualAdd)
        .map(|p| Some(p.with_context(name)))
}

/// `a + b` on two f32 tensors of one shape, in one pass over contiguous memory; an op tract
/// does not fuse into the product that feeds it.
#[derive(Debug, Clone, Default, Hash, PartialEq, Eq)]
pub struct ResidualAdd;

impl Op for ResidualAdd {
    fn name(&self) -> StaticName {
        "ResidualAdd".into()
    }

    op_as_typed_op!();
}

impl EvalOp for ResidualAdd {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, b) = args_2!(inputs);
        let mut out = a.into_tensor();
        {
            let b = b.try_as_plain_ram()?;
            let b = b.as_slice::<f32>()?;
            let mut view = out.try_as_plain_ram_mut()?;
            let out = view.as_slice_mut::<f32>()?;
            if out.len() != b.len() {
                bail!("ResidualAdd: {} and {} values", out.len(), b.len());
            }
            for (o, x) in out.iter_mut().zip(b) {
                *o += *x;
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for ResidualAdd {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].without_value()))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_core::ops::einsum::EinSum;

    /// `x + a·b` with a [6, 5] and b [5, 7]: b computed (an attention's values) or a weight.
    fn product_plus_residual(b_is_weight: bool) -> TypedModel {
        let mut model = TypedModel::default();
        let a = model.add_source("a", f32::fact([6, 5])).unwrap();
        let b = if b_is_weight {
            model.add_const("b", tensor2(&[[0.5f32; 7]; 5])).unwrap()
        } else {
            model.add_source("b", f32::fact([5, 7])).unwrap()
        };
        let x = model.add_source("x", f32::fact([6, 7])).unwrap();
        let ab = model
            .wire_node(
                "ab",
                EinSum::new("mk,kn->mn".parse().unwrap(), f32::datum_type()),
                &[a, b],
            )
            .unwrap();
        let y = model
            .wire_node("y", tract_core::ops::math::add(), &[x, ab[0]])
            .unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    fn apply_transform(model: &mut TypedModel) {
        let transform = tract_core::transform::get_transform(NAME).unwrap();
        transform
            .expect("registered with tract")
            .transform(model)
            .unwrap();
    }

    fn swapped(model: &TypedModel) -> bool {
        model.nodes().iter().any(|n| n.op_is::<ResidualAdd>())
    }

    /// x + P·V, as the head's attention writes it: the transform swaps the add, not the
    /// product, and the result stays bit for bit.
    #[test]
    fn the_transform_is_registered_and_swaps_the_residual_add_keeping_its_bits() {
        let mut model = product_plus_residual(false);
        let vals = |n: usize, s: f32| -> Tensor {
            let v: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * s).collect();
            tensor1(&v)
        };
        let inputs = [
            vals(30, 0.13).into_shape(&[6, 5]).unwrap(),
            vals(35, 0.71).into_shape(&[5, 7]).unwrap(),
            vals(42, 1.9).into_shape(&[6, 7]).unwrap(),
        ];
        let run = |m: &TypedModel| {
            let plan = m.clone().into_optimized().unwrap().into_runnable().unwrap();
            let out = plan
                .run(inputs.iter().map(|t| t.clone().into_tvalue()).collect())
                .unwrap();
            out[0].clone().into_tensor()
        };
        let before = run(&model);
        apply_transform(&mut model);
        assert!(swapped(&model), "the add was not swapped: {model}");
        assert!(model.nodes().iter().any(|n| n.op_is::<EinSum>()));
        assert_eq!(run(&model), before);
    }

    #[test]
    fn a_product_with_a_weight_keeps_its_fused_add() {
        let mut model = product_plus_residual(true);
        apply_transform(&mut model);
        assert!(!swapped(&model));
    }
}
