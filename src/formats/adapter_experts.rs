//! LoRA on a mixture of experts, in the layout PEFT loads. transformers 5 fuses Mixtral's experts
//! into two 3-D parameters per layer (`mlp.experts.gate_up_proj` `[E, 2F, H]`, the `w1` and `w3`
//! rows stacked; `mlp.experts.down_proj` `[E, H, F]`), so PEFT adapts them with
//! `target_parameters`, not `target_modules`: one `lora_A` `[R·E, in]` (expert `e`'s rows
//! `e·R .. (e+1)·R`) and one `lora_B` `[out, R·E]` (expert `e`'s column `j` at `j·E + e`) per
//! parameter (peft `ParamWrapper.get_delta_weight`).
//!
//! switchyard keeps a pair per expert projection (`…block_sparse_moe.experts.3.w1`); the files
//! hold PEFT's form. `w1` and `w3` (rank `r` each) become one rank-`2r` pair for `gate_up_proj`:
//! `A_e = [A1; A3]`, `B_e = [[B1, 0], [0, B3]]`, so `B_e·A_e = [B1·A1; B3·A3]` exactly; its
//! `alpha_pattern` keeps the scale `alpha / r`. When both parameters are adapted PEFT nests the
//! wrappers: `gate_up_proj`'s factors sit under `mlp.experts.base_layer`, `down_proj`'s under
//! `mlp.experts`; one alone sits under `mlp.experts`.

use std::collections::BTreeMap;

use super::HostTensor;
use super::adapter_config::{AdapterConfig, LoraPair, lora_scale};

const GATE_UP: &str = "mlp.experts.gate_up_proj";
const DOWN: &str = "mlp.experts.down_proj";

/// `model.layers.L.block_sparse_moe.experts.E.wN` (Mixtral's names) or
/// `model.layers.L.mlp.experts.E.{gate,down,up}_proj` (DeepSeek's) → (L, E, N), N as Mixtral
/// numbers them (1 gate, 2 down, 3 up).
fn expert_module(name: &str) -> Option<(usize, usize, u8)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let rest = rest
        .strip_prefix("block_sparse_moe.experts.")
        .or_else(|| rest.strip_prefix("mlp.experts."))?;
    let (expert, w) = rest.split_once('.')?;
    let n = match w {
        "w1" | "gate_proj" => 1,
        "w2" | "down_proj" => 2,
        "w3" | "up_proj" => 3,
        _ => return None,
    };
    Some((layer.parse().ok()?, expert.parse().ok()?, n))
}

/// The same expert projection under the other architecture's names (read adapters name experts
/// the Mixtral way; a DeepSeek-style model looks them up under its own).
pub fn other_style(name: &str) -> Option<String> {
    let (l, e, n) = expert_module(name)?;
    Some(match name.contains(".block_sparse_moe.") {
        true => {
            let w = ["", "gate_proj", "down_proj", "up_proj"][n as usize];
            format!("model.layers.{l}.mlp.experts.{e}.{w}")
        }
        false => expert_name(l, e, n),
    })
}

fn expert_name(layer: usize, expert: usize, n: u8) -> String {
    format!("model.layers.{layer}.block_sparse_moe.experts.{expert}.w{n}")
}

/// Whether any pair adapts an expert.
pub fn has_experts(pairs: &BTreeMap<String, LoraPair>) -> bool {
    pairs.keys().any(|k| expert_module(k).is_some())
}

/// Where PEFT stores a parameter's factors, given which parameters the adapter targets.
fn wrapper(layer: usize, param: &str, both: bool) -> String {
    let nested = both && param == GATE_UP;
    format!(
        "model.layers.{layer}.mlp.experts{}",
        if nested { ".base_layer" } else { "" }
    )
}

/// The per-expert pairs as PEFT's fused ones, and the config keys that go with them. `experts`
/// is the number of experts per layer (unadapted experts get zero blocks).
pub fn fuse(
    pairs: &BTreeMap<String, LoraPair>,
    config: &mut AdapterConfig,
    experts: usize,
) -> BTreeMap<String, LoraPair> {
    let mut out = BTreeMap::new();
    // layer → (expert, n) → pair
    let mut by_layer: BTreeMap<usize, BTreeMap<(usize, u8), &LoraPair>> = BTreeMap::new();
    for (name, pair) in pairs {
        match expert_module(name) {
            Some((l, e, n)) => {
                by_layer.entry(l).or_default().insert((e, n), pair);
            }
            None => {
                out.insert(name.clone(), pair.clone());
            }
        }
    }
    let r = config.r;
    let any = |n: u8| by_layer.values().any(|m| m.keys().any(|k| k.1 == n));
    let (gate_up, down) = (any(1) || any(3), any(2));
    let both = gate_up && down;
    for (&layer, mods) in &by_layer {
        let (h, f) = mods
            .iter()
            .map(|(&(_, n), p)| match n {
                2 => (p.b.shape[0], p.a.shape[1]),
                _ => (p.a.shape[1], p.b.shape[0]),
            })
            .next()
            .expect("a layer with adapted experts");
        if gate_up {
            let rr = 2 * r;
            let mut a = vec![0f32; rr * experts * h];
            let mut b = vec![0f32; 2 * f * rr * experts];
            for e in 0..experts {
                for (half, n) in [(0, 1u8), (1, 3u8)] {
                    let Some(p) = mods.get(&(e, n)) else { continue };
                    for j in 0..r {
                        let row = e * rr + half * r + j;
                        a[row * h..(row + 1) * h].copy_from_slice(&p.a.data[j * h..(j + 1) * h]);
                        for o in 0..f {
                            let col = (half * r + j) * experts + e;
                            b[(half * f + o) * rr * experts + col] = p.b.data[o * r + j];
                        }
                    }
                }
            }
            out.insert(
                wrapper(layer, GATE_UP, both),
                LoraPair {
                    a: HostTensor::new(vec![rr * experts, h], a),
                    b: HostTensor::new(vec![2 * f, rr * experts], b),
                },
            );
        }
        if down {
            let mut a = vec![0f32; r * experts * f];
            let mut b = vec![0f32; h * r * experts];
            for e in 0..experts {
                let Some(p) = mods.get(&(e, 2)) else { continue };
                for j in 0..r {
                    let row = e * r + j;
                    a[row * f..(row + 1) * f].copy_from_slice(&p.a.data[j * f..(j + 1) * f]);
                    for o in 0..h {
                        b[o * r * experts + j * experts + e] = p.b.data[o * r + j];
                    }
                }
            }
            out.insert(
                wrapper(layer, DOWN, both),
                LoraPair {
                    a: HostTensor::new(vec![r * experts, f], a),
                    b: HostTensor::new(vec![h, r * experts], b),
                },
            );
        }
    }
    let mut params = Vec::new();
    if down {
        params.push(DOWN.to_string());
    }
    if gate_up {
        params.push(GATE_UP.to_string());
        config
            .rank_pattern
            .insert("gate_up_proj".into(), (2 * r).into());
        // alpha / r at rank 2r: alpha·2 (or alpha·√2 with rsLoRA's alpha / √r).
        let alpha = if config.use_rslora {
            config.lora_alpha * 2f64.sqrt()
        } else {
            config.lora_alpha * 2.0
        };
        config
            .alpha_pattern
            .insert("gate_up_proj".into(), alpha.into());
    }
    config.target_parameters = Some(params);
    // PEFT refuses dropout on parameter adapters; it only matters while training.
    config.lora_dropout = 0.0;
    out
}

/// PEFT's fused expert pairs back into one pair per expert projection, each with the adapter's
/// base scale (`alpha_pattern` folded into `B`).
pub fn split(
    pairs: BTreeMap<String, LoraPair>,
    config: &AdapterConfig,
) -> Result<BTreeMap<String, LoraPair>, String> {
    let params = config.target_parameters.clone().unwrap_or_default();
    for p in &params {
        if p != GATE_UP && p != DOWN {
            return Err(format!(
                "target_parameters: `{p}` is not supported (only {GATE_UP} and {DOWN})"
            ));
        }
    }
    let both = params.len() == 2;
    let mut out = BTreeMap::new();
    for (name, pair) in pairs {
        let layer = name
            .strip_prefix("model.layers.")
            .and_then(|r| r.split_once('.'))
            .and_then(|(l, rest)| {
                matches!(rest, "mlp.experts" | "mlp.experts.base_layer").then_some(l)
            })
            .and_then(|l| l.parse::<usize>().ok());
        let Some(layer) = layer else {
            out.insert(name, pair);
            continue;
        };
        let param = params
            .iter()
            .find(|p| wrapper(layer, p, both) == name)
            .ok_or_else(|| format!("`{name}` matches none of target_parameters {params:?}"))?;
        let short = param.rsplit('.').next().unwrap_or(param);
        let rank = config
            .rank_pattern
            .get(short)
            .and_then(|v| v.as_u64())
            .map_or(config.r, |v| v as usize);
        let alpha = config
            .alpha_pattern
            .get(short)
            .and_then(|v| v.as_f64())
            .unwrap_or(config.lora_alpha);
        let (rows, d_in) = (pair.a.shape[0], pair.a.shape[1]);
        let (d_out, cols) = (pair.b.shape[0], pair.b.shape[1]);
        if rank == 0 || !rows.is_multiple_of(rank) || cols != rows {
            return Err(format!(
                "`{name}`: lora_A {:?} and lora_B {:?} do not hold rank-{rank} blocks per expert",
                pair.a.shape, pair.b.shape
            ));
        }
        let experts = rows / rank;
        let at = |o: usize, j: usize, e: usize| pair.b.data[o * cols + j * experts + e];
        let (halves, part): (&[(u8, usize)], usize) = if param == GATE_UP {
            if !d_out.is_multiple_of(2) {
                return Err(format!("`{name}`: gate_up_proj has an odd width {d_out}"));
            }
            (&[(1, 0), (3, 1)], d_out / 2)
        } else {
            (&[(2, 0)], d_out)
        };
        // The form `fuse` writes (w1's and w3's blocks on the diagonal) splits back into rank
        // `rank / 2` pairs; any other gate_up adapter gives each half the whole rank.
        let diagonal = param == GATE_UP
            && rank.is_multiple_of(2)
            && (0..experts).all(|e| {
                (0..part).all(|o| {
                    (rank / 2..rank).all(|j| at(o, j, e) == 0.0)
                        && (0..rank / 2).all(|j| at(part + o, j, e) == 0.0)
                })
            });
        let each = if diagonal { rank / 2 } else { rank };
        // What PEFT computes, `alpha / rank`, over the scale switchyard gives a pair of rank
        // `each`, `lora_alpha / each`: folded into B.
        let fold = (lora_scale(alpha, rank, config.use_rslora)
            / lora_scale(config.lora_alpha, each, config.use_rslora)) as f32;
        for e in 0..experts {
            for &(n, half) in halves {
                let first = if diagonal { half * each } else { 0 };
                let rows = e * rank + first..e * rank + first + each;
                let a = pair.a.data[rows.start * d_in..rows.end * d_in].to_vec();
                let mut b = vec![0f32; part * each];
                for o in 0..part {
                    for j in 0..each {
                        b[o * each + j] = at(half * part + o, first + j, e) * fold;
                    }
                }
                out.insert(
                    expert_name(layer, e, n),
                    LoraPair {
                        a: HostTensor::new(vec![each, d_in], a),
                        b: HostTensor::new(vec![part, each], b),
                    },
                );
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(r: usize, d_in: usize, d_out: usize, seed: f32) -> LoraPair {
        let v = |n: usize, k: f32| (0..n).map(|i| ((i as f32 + k) * 0.37).sin()).collect();
        LoraPair {
            a: HostTensor::new(vec![r, d_in], v(r * d_in, seed)),
            b: HostTensor::new(vec![d_out, r], v(d_out * r, seed + 0.5)),
        }
    }

    /// `scale·B·A` as `[out, in]`.
    fn delta(p: &LoraPair, scale: f64) -> Vec<f32> {
        let (r, d_in, d_out) = (p.a.shape[0], p.a.shape[1], p.b.shape[0]);
        let mut d = vec![0f32; d_out * d_in];
        for o in 0..d_out {
            for i in 0..d_in {
                let s: f32 = (0..r)
                    .map(|j| p.b.data[o * r + j] * p.a.data[j * d_in + i])
                    .sum();
                d[o * d_in + i] = s * scale as f32;
            }
        }
        d
    }

    #[test]
    fn fused_experts_split_back_to_the_same_updates() {
        let (h, f, r, experts) = (6, 5, 2, 3);
        let mut pairs = BTreeMap::new();
        for l in 0..2 {
            // Expert 1 of layer 1 is not adapted: its blocks stay zero.
            for e in (0..experts).filter(|&e| (l, e) != (1, 1)) {
                let s = (l * 10 + e) as f32;
                pairs.insert(expert_name(l, e, 1), pair(r, h, f, s));
                pairs.insert(expert_name(l, e, 2), pair(r, f, h, s + 1.0));
                pairs.insert(expert_name(l, e, 3), pair(r, h, f, s + 2.0));
            }
            pairs.insert(
                format!("model.layers.{l}.self_attn.q_proj"),
                pair(r, h, h, 7.0),
            );
        }
        for rslora in [false, true] {
            let mut config = AdapterConfig::new(r, 8.0, 0.1, rslora, vec!["w1".into()]);
            let fused = fuse(&pairs, &mut config, experts);
            assert_eq!(config.rank_pattern["gate_up_proj"], 4);
            assert_eq!(config.lora_dropout, 0.0);
            assert_eq!(
                fused["model.layers.0.mlp.experts.base_layer"].a.shape,
                [12, h]
            );
            assert_eq!(
                fused["model.layers.0.mlp.experts.base_layer"].b.shape,
                [2 * f, 12]
            );
            assert_eq!(fused["model.layers.1.mlp.experts"].a.shape, [6, f]);
            let back = split(fused, &config).unwrap();
            assert_eq!(
                back.len(),
                pairs.len() + 3,
                "the unadapted expert comes back as zeros"
            );
            let base = super::lora_scale(8.0, r, rslora);
            for (name, p) in &back {
                let scale = super::lora_scale(8.0, p.a.shape[0], rslora);
                let want = match pairs.get(name) {
                    Some(orig) => delta(orig, base),
                    None => vec![0.0; p.b.shape[0] * p.a.shape[1]],
                };
                let got = delta(p, scale);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-5, "{name}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn a_full_rank_gate_up_adapter_gives_both_halves_its_rank() {
        // PEFT's own form: rank 2 shared by w1 and w3 (no diagonal blocks).
        let (h, f, r, experts) = (4, 3, 2, 2);
        let mut config = AdapterConfig::new(r, 4.0, 0.0, false, vec![]);
        config.target_parameters = Some(vec![GATE_UP.into()]);
        let fused = pair(r * experts, h, 2 * f, 1.0);
        let mut pairs = BTreeMap::new();
        pairs.insert("model.layers.0.mlp.experts".to_string(), fused.clone());
        let back = split(pairs, &config).unwrap();
        assert_eq!(back.len(), 2 * experts);
        // Expert 1's w3 update is rows f..2f of B_1·A_1.
        let p = &back[&expert_name(0, 1, 3)];
        assert_eq!(p.a.shape, [r, h]);
        let got = delta(p, 2.0);
        for o in 0..f {
            for i in 0..h {
                let want: f32 = (0..r)
                    .map(|j| fused.b.data[(f + o) * 4 + j * 2 + 1] * fused.a.data[(2 + j) * h + i])
                    .sum::<f32>()
                    * 2.0;
                assert!((got[o * h + i] - want).abs() < 1e-5);
            }
        }
        config.target_parameters = Some(vec!["mlp.experts.w9".into()]);
        let mut pairs = BTreeMap::new();
        pairs.insert("model.layers.0.mlp.experts".to_string(), fused);
        assert!(split(pairs, &config).unwrap_err().contains("w9"));
    }
}
