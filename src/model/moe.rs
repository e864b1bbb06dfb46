//! Sparse mixtures of experts: a router scores every expert for each token, the best
//! `per_token` run on it, and their outputs are summed with the router's weights (plus an
//! always-on shared expert in DeepSeek's design). Tokens are grouped by expert, so each expert
//! runs once, on its own tokens only.
//!
//! The routers (transformers' `MixtralTopKRouter`, `DeepseekV3TopkRouter`, `Mistral4TopkRouter`):
//! scores are the softmax over all experts (Mixtral, Mistral Large 3) or each expert's sigmoid
//! (DeepSeek-V3, whose `e_score_correction_bias` is added for choosing only); with expert groups,
//! a token chooses among the `topk_groups` groups whose two best scores sum highest; the chosen
//! scores are normalised to sum to one and multiplied by `routed_scaling_factor`.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;
use burn::tensor::activation::{sigmoid, softmax};

use super::blocks::{Mlp, dense};

/// How the router chooses and weighs.
#[derive(Debug, Clone, Copy)]
pub struct Routing {
    pub per_token: usize,
    pub sigmoid: bool,
    pub groups: usize,
    pub topk_groups: usize,
    pub normalize: bool,
    pub routed_scale: f64,
    /// Experts' projections in Mixtral's order (`w1`, `w2`, `w3`: gate, down, up) rather than
    /// gate, up, down.
    pub mixtral_order: bool,
}

#[derive(Module, Debug)]
pub struct Moe {
    /// The router, `[hidden, experts]`; frozen in fine-tuning.
    pub gate: Linear,
    /// DeepSeek-V3's per-expert bias on the scores, for choosing only.
    pub choice_bias: Option<Param<Tensor<1>>>,
    pub experts: Vec<Mlp>,
    pub shared_experts: Option<Mlp>,
    #[module(skip)]
    pub routing: Routing,
}

impl Routing {
    /// The experts token scores `choice` picks, best first (ties: the lower index, as
    /// torch.topk on the CPU).
    fn choose(&self, choice: &mut [f32]) -> Vec<usize> {
        let experts = choice.len();
        if self.groups > 1 {
            let size = experts / self.groups;
            let score = |g: &[f32]| {
                let mut v = g.to_vec();
                v.sort_by(|a, b| b.total_cmp(a));
                v[0] + v[1]
            };
            let scores: Vec<f32> = choice.chunks(size).map(score).collect();
            let mut order: Vec<usize> = (0..self.groups).collect();
            order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]).then(i.cmp(&j)));
            // DeepSeek-V3 masks the other groups with -inf, Mistral Large 3 with 0.
            let masked = if self.sigmoid { f32::NEG_INFINITY } else { 0.0 };
            for &g in &order[self.topk_groups..] {
                choice[g * size..(g + 1) * size].fill(masked);
            }
        }
        let mut order: Vec<usize> = (0..experts).collect();
        order.sort_by(|&i, &j| choice[j].total_cmp(&choice[i]).then(i.cmp(&j)));
        order.truncate(self.per_token);
        order
    }
}

impl Moe {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, s, h] = x.dims();
        let n = b * s;
        let experts = self.experts.len();
        let k = self.routing.per_token;
        let flat = x.clone().reshape([n, h]);
        let logits = dense(&self.gate, flat.clone().reshape([1, n, h])).reshape([n, experts]);
        let scores = match self.routing.sigmoid {
            true => sigmoid(logits),
            false => softmax(logits, 1),
        };
        let scores = scores.reshape([n * experts]);
        // The choice of experts is discrete: made on the host, from values without gradient.
        let host = scores.clone().to_data().convert::<f32>();
        let host = host.as_slice::<f32>().expect("f32 router scores");
        let bias: Option<Vec<f32>> = self.choice_bias.as_ref().map(|b| {
            b.val()
                .to_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("f32 bias")
        });
        let mut rows: Vec<Vec<i64>> = vec![Vec::new(); experts];
        let mut chosen = Vec::with_capacity(n * k);
        for (t, p) in host.chunks(experts).enumerate() {
            let mut choice = p.to_vec();
            if let Some(bias) = &bias {
                choice.iter_mut().zip(bias).for_each(|(c, b)| *c += b);
            }
            for e in self.routing.choose(&mut choice) {
                rows[e].push(t as i64);
                chosen.push((t * experts + e) as i64);
            }
        }
        // The chosen scores keep their gradient, so training sees how the weighting depends on
        // the hidden state.
        let device = flat.device();
        let index = |v: Vec<i64>| {
            let len = v.len();
            Tensor::<1, Int>::from_data(TensorData::new(v, [len]), &device)
        };
        let scores2 = scores.clone().reshape([n, experts]);
        let weights = match self.routing.normalize {
            true => {
                let total = scores.select(0, index(chosen)).reshape([n, k]).sum_dim(1) + 1e-20;
                scores2 / total
            }
            false => scores2,
        };
        let weights = (weights * self.routing.routed_scale).reshape([n * experts]);
        let mut out = Tensor::<2>::zeros([n, h], &device);
        for (e, (expert, tokens)) in self.experts.iter().zip(rows).enumerate() {
            if tokens.is_empty() {
                continue;
            }
            let m = tokens.len();
            let slots: Vec<i64> = tokens
                .iter()
                .map(|&t| t * experts as i64 + e as i64)
                .collect();
            let tokens = index(tokens);
            let w = weights.clone().select(0, index(slots)).reshape([m, 1]);
            let y = expert
                .forward(flat.clone().select(0, tokens.clone()).reshape([1, m, h]))
                .reshape([m, h]);
            out = out.select_assign(0, tokens, y * w, IndexingUpdateOp::Add);
        }
        let out = out.reshape([b, s, h]);
        match &self.shared_experts {
            Some(shared) => out + shared.forward(x),
            None => out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing(groups: usize, topk_groups: usize, sigmoid: bool) -> Routing {
        Routing {
            per_token: 2,
            sigmoid,
            groups,
            topk_groups,
            normalize: true,
            routed_scale: 1.0,
            mixtral_order: false,
        }
    }

    #[test]
    fn groups_limit_the_choice_to_the_best_groups() {
        // Groups [0.9, 0.0 | 0.5, 0.45]: sums of their two best are 0.9 and 0.95, so only the
        // second group may be chosen, although expert 0 scores highest.
        let mut c = vec![0.9, 0.0, 0.5, 0.45];
        assert_eq!(routing(2, 1, true).choose(&mut c), [2, 3]);
        let mut c = vec![0.9, 0.0, 0.5, 0.45];
        assert_eq!(routing(1, 1, true).choose(&mut c), [0, 2]);
        // Ties go to the lower index.
        let mut c = vec![0.3, 0.3, 0.3, 0.1];
        assert_eq!(routing(1, 1, false).choose(&mut c), [0, 1]);
    }
}
