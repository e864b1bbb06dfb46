//! AdamW with torch's semantics (decoupled weight decay, bias correction), the global-norm
//! gradient clipping of `clip_grad_norm_` (burn clips per tensor), and the warmup + schedule of
//! transformers' `get_*_schedule_with_warmup`. State lives in plain tensors so that checkpoints
//! can name every piece of it.

use burn::prelude::*;

use super::recipe::Schedule;

/// The learning rate at optimiser step `step` (0-based), as transformers computes it.
pub fn lr_at(step: usize, base: f64, warmup: usize, total: usize, schedule: Schedule) -> f64 {
    if step < warmup {
        return base * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    match schedule {
        Schedule::Constant => base,
        Schedule::Linear => base * (1.0 - progress).max(0.0),
        Schedule::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()),
    }
}

#[derive(Debug, Clone, Copy)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// First and second moments of one parameter.
#[derive(Debug, Clone)]
pub struct Moments {
    pub m: Tensor<2>,
    pub v: Tensor<2>,
}

impl Moments {
    pub fn zeros(like: &Tensor<2>) -> Self {
        Self {
            m: like.zeros_like(),
            v: like.zeros_like(),
        }
    }
}

impl AdamW {
    /// One update of `p` with gradient `g` at step `t` (1-based); returns the new value.
    pub fn update(
        &self,
        p: Tensor<2>,
        g: Tensor<2>,
        state: &mut Moments,
        lr: f64,
        t: usize,
    ) -> Tensor<2> {
        let p = if self.weight_decay > 0.0 {
            p.clone() - p * (lr * self.weight_decay)
        } else {
            p
        };
        state.m = state.m.clone() * self.beta1 + g.clone() * (1.0 - self.beta1);
        state.v = state.v.clone() * self.beta2 + g.square() * (1.0 - self.beta2);
        let bc1 = 1.0 - self.beta1.powi(t as i32);
        let bc2 = 1.0 - self.beta2.powi(t as i32);
        let denom = (state.v.clone() / bc2).sqrt() + self.eps;
        p - state.m.clone() / denom * (lr / bc1)
    }
}

/// The global L2 norm of all gradients; scales them in place to at most `max_norm` (0: no clip).
pub fn clip_global_norm(grads: &mut [Tensor<2>], max_norm: f64) -> f64 {
    let sq: Vec<Tensor<1>> = grads.iter().map(|g| g.clone().square().sum()).collect();
    let norm = Tensor::cat(sq, 0).sum().into_scalar::<f32>().sqrt() as f64;
    if max_norm > 0.0 && norm > max_norm {
        let coef = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = g.clone() * coef;
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_matches_transformers() {
        // get_cosine_schedule_with_warmup(lr=1, warmup=10, total=110)
        assert_eq!(lr_at(0, 1.0, 10, 110, Schedule::Cosine), 0.0);
        assert!((lr_at(5, 1.0, 10, 110, Schedule::Cosine) - 0.5).abs() < 1e-12);
        assert!((lr_at(10, 1.0, 10, 110, Schedule::Cosine) - 1.0).abs() < 1e-12);
        assert!((lr_at(60, 1.0, 10, 110, Schedule::Cosine) - 0.5).abs() < 1e-12);
        assert!((lr_at(35, 1.0, 10, 110, Schedule::Linear) - 0.75).abs() < 1e-12);
        assert_eq!(lr_at(80, 1.0, 10, 110, Schedule::Constant), 1.0);
    }

    #[test]
    fn adamw_first_step_moves_by_lr() {
        let dev = Device::default();
        let p = Tensor::<2>::from_floats([[1.0, -1.0]], &dev);
        let g = Tensor::<2>::from_floats([[0.5, -2.0]], &dev);
        let mut st = Moments::zeros(&p);
        let opt = AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let out: Vec<f32> = opt
            .update(p, g, &mut st, 0.1, 1)
            .into_data()
            .try_to_vec()
            .unwrap();
        // Bias-corrected first step: p - lr * sign(g).
        assert!(
            (out[0] - 0.9).abs() < 1e-5 && (out[1] + 0.9).abs() < 1e-5,
            "{out:?}"
        );
    }

    #[test]
    fn clipping_uses_the_global_norm() {
        let dev = Device::default();
        let mut g = vec![
            Tensor::<2>::from_floats([[3.0]], &dev),
            Tensor::<2>::from_floats([[4.0]], &dev),
        ];
        let n = clip_global_norm(&mut g, 1.0);
        assert!((n - 5.0).abs() < 1e-5);
        let a: f32 = g[0].clone().into_scalar();
        assert!((a - 0.6).abs() < 1e-4, "{a}");
    }
}
