//! Provider catalogs instead of example prices: what the Hugging Face router (`GET /v1/models`:
//! per model, each provider's price per million tokens, context, first-token latency,
//! throughput, tools and structured-output support, status) and OpenRouter (`GET
//! /api/v1/models`: price per token) say they serve, written into a targets file with the date
//! they were read. The file is edited in place: comments and layout stay.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use toml_edit::{DocumentMut, InlineTable, Item, Table, value};

/// The catalogs switchyard reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The Hugging Face Inference Providers router.
    Hf,
    OpenRouter,
}

impl Source {
    /// The target `provider` its models are asked through.
    pub fn preset(self) -> &'static str {
        match self {
            Source::Hf => "hf",
            Source::OpenRouter => "openrouter",
        }
    }

    /// Where its model list is, under the preset's base URL.
    pub fn models_path(self) -> &'static str {
        "/models"
    }
}

/// One model as one provider serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    pub model: String,
    /// The provider behind the router (Hugging Face); None for OpenRouter's blended entry.
    pub provider: Option<String>,
    /// USD per million input and output tokens.
    pub price_in: Option<f64>,
    pub price_out: Option<f64>,
    pub context_length: Option<u64>,
    pub first_token_latency_ms: Option<f64>,
    /// Output tokens per second.
    pub throughput: Option<f64>,
    pub supports_tools: Option<bool>,
    pub supports_structured_output: Option<bool>,
    /// `live`, `staging`, … (Hugging Face).
    pub status: Option<String>,
}

impl Offer {
    fn live(&self) -> bool {
        self.status.as_deref().is_none_or(|s| s == "live")
    }

    fn price(&self) -> f64 {
        self.price_in.unwrap_or(f64::INFINITY) + self.price_out.unwrap_or(f64::INFINITY)
    }
}

/// What a catalog records on a target: where and when its price came from.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    pub source: String,
    /// The day the catalog was read (UTC, `YYYY-MM-DD`).
    pub read_at: String,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub context_length: Option<u64>,
    #[serde(default)]
    pub first_token_latency_ms: Option<f64>,
    #[serde(default)]
    pub throughput: Option<f64>,
    #[serde(default)]
    pub supports_tools: Option<bool>,
    #[serde(default)]
    pub supports_structured_output: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{url}: {detail}")]
    Fetch { url: String, detail: String },
    #[error("{url}: not a model list: {detail}")]
    Shape { url: String, detail: String },
}

/// Read a catalog's model list (a bearer token when the catalog wants one).
pub fn fetch(
    source: Source,
    base_url: &str,
    token: Option<&str>,
) -> Result<Vec<Offer>, CatalogError> {
    let url = format!("{}{}", base_url.trim_end_matches('/'), source.models_path());
    let mut req = ureq::get(&url).timeout(std::time::Duration::from_secs(60));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let fail = |detail: String| CatalogError::Fetch {
        url: url.clone(),
        detail,
    };
    let body: Value = req
        .call()
        .map_err(|e| fail(e.to_string()))?
        .into_json()
        .map_err(|e| fail(format!("not JSON: {e}")))?;
    let parsed = match source {
        Source::Hf => parse_hf(&body),
        Source::OpenRouter => parse_openrouter(&body),
    };
    parsed.map_err(|detail| CatalogError::Shape { url, detail })
}

fn models(v: &Value) -> Result<&Vec<Value>, String> {
    v.get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| "no `data` array".to_string())
}

/// The router's list: one offer per model × provider.
pub fn parse_hf(v: &Value) -> Result<Vec<Offer>, String> {
    let mut out = Vec::new();
    for m in models(v)? {
        let id = m
            .get("id")
            .and_then(Value::as_str)
            .ok_or("a model without `id`")?;
        for p in m
            .get("providers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let f = |k: &str| p.get(k).and_then(Value::as_f64);
            out.push(Offer {
                model: id.to_string(),
                provider: p
                    .get("provider")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                price_in: p.pointer("/pricing/input").and_then(Value::as_f64),
                price_out: p.pointer("/pricing/output").and_then(Value::as_f64),
                context_length: p.get("context_length").and_then(Value::as_u64),
                first_token_latency_ms: f("first_token_latency_ms"),
                throughput: f("throughput"),
                supports_tools: p.get("supports_tools").and_then(Value::as_bool),
                supports_structured_output: p
                    .get("supports_structured_output")
                    .and_then(Value::as_bool),
                status: p.get("status").and_then(Value::as_str).map(str::to_string),
            });
        }
    }
    Ok(out)
}

/// OpenRouter's list: prices per token, as strings, turned into USD per million tokens.
pub fn parse_openrouter(v: &Value) -> Result<Vec<Offer>, String> {
    let per_million = |x: Option<&Value>| -> Option<f64> {
        let x = x?;
        let n = x.as_f64().or_else(|| x.as_str()?.parse().ok())?;
        Some((n * 1e6 * 1e9).round() / 1e9)
    };
    let mut out = Vec::new();
    for m in models(v)? {
        let id = m
            .get("id")
            .and_then(Value::as_str)
            .ok_or("a model without `id`")?;
        let params = m.get("supported_parameters").and_then(Value::as_array);
        let has = |p: &str| params.map(|ps| ps.iter().any(|x| x == p));
        out.push(Offer {
            model: id.to_string(),
            provider: None,
            price_in: per_million(m.pointer("/pricing/prompt")),
            price_out: per_million(m.pointer("/pricing/completion")),
            context_length: m.get("context_length").and_then(Value::as_u64),
            first_token_latency_ms: None,
            throughput: None,
            supports_tools: has("tools"),
            supports_structured_output: has("structured_outputs")
                .zip(has("response_format"))
                .map(|(a, b)| a || b),
            status: None,
        });
    }
    Ok(out)
}

/// What a sync did to a targets file.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// (target, offer taken)
    pub updated: Vec<(String, Offer)>,
    /// Targets of a synced provider whose model the catalog does not list.
    pub missing: Vec<String>,
    pub added: Vec<String>,
}

/// The offer a target takes: for the Hugging Face router, the provider its model suffix or
/// `routing` names, else the fastest (`routing = "fastest"`) or the cheapest live one.
fn choose<'a>(
    source: Source,
    model: &str,
    routing: Option<&str>,
    offers: &'a [Offer],
) -> Option<&'a Offer> {
    let (model, suffix) = match model.split_once(':') {
        Some((m, s)) => (m, Some(s)),
        None => (model, None),
    };
    let of_model: Vec<&Offer> = offers
        .iter()
        .filter(|o| o.model.eq_ignore_ascii_case(model))
        .collect();
    if source == Source::OpenRouter {
        return of_model.first().copied();
    }
    match suffix.or(routing) {
        Some(p) if !matches!(p, "fastest" | "cheapest" | "preferred") => of_model
            .into_iter()
            .find(|o| o.provider.as_deref() == Some(p)),
        Some("fastest") => of_model.into_iter().filter(|o| o.live()).max_by(|a, b| {
            a.throughput
                .unwrap_or(0.0)
                .total_cmp(&b.throughput.unwrap_or(0.0))
        }),
        _ => of_model
            .into_iter()
            .filter(|o| o.live() && o.price().is_finite())
            .min_by(|a, b| a.price().total_cmp(&b.price())),
    }
}

fn entry(source: Source, offer: &Offer, date: &str) -> InlineTable {
    let mut t = InlineTable::new();
    t.insert(
        "source",
        match source {
            Source::Hf => "hf router /v1/models",
            Source::OpenRouter => "openrouter /api/v1/models",
        }
        .into(),
    );
    t.insert("read_at", date.into());
    if let Some(p) = &offer.provider {
        t.insert("provider", p.as_str().into());
    }
    if let Some(c) = offer.context_length {
        t.insert("context_length", (c as i64).into());
    }
    for (k, v) in [
        ("first_token_latency_ms", offer.first_token_latency_ms),
        ("throughput", offer.throughput),
    ] {
        if let Some(v) = v {
            t.insert(k, v.into());
        }
    }
    for (k, v) in [
        ("supports_tools", offer.supports_tools),
        (
            "supports_structured_output",
            offer.supports_structured_output,
        ),
    ] {
        if let Some(v) = v {
            t.insert(k, v.into());
        }
    }
    t
}

/// Put a catalog's prices into the targets of its provider, and add targets for `add` (model
/// ids); `date` is when the catalog was read.
pub fn sync(
    doc: &mut DocumentMut,
    source: Source,
    offers: &[Offer],
    date: &str,
    add: &[String],
) -> SyncReport {
    let mut report = SyncReport::default();
    if !doc.contains_key("targets") {
        doc.insert("targets", Item::ArrayOfTables(Default::default()));
    }
    let Some(targets) = doc["targets"].as_array_of_tables_mut() else {
        return report;
    };
    let mut known_models = Vec::new();
    for t in targets.iter_mut() {
        if t.get("provider").and_then(|p| p.as_str()) != Some(source.preset()) {
            continue;
        }
        let name = t
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .to_string();
        let model = t
            .get("model")
            .and_then(|m| m.as_str())
            .unwrap_or("")
            .to_string();
        known_models.push(model.to_ascii_lowercase());
        let routing = t
            .get("routing")
            .and_then(|r| r.as_str())
            .map(str::to_string);
        match choose(source, &model, routing.as_deref(), offers) {
            Some(o) => {
                set_offer(t, source, o, date);
                report.updated.push((name, o.clone()));
            }
            None => report.missing.push(name),
        }
    }
    for model in add {
        if known_models.contains(&model.to_ascii_lowercase()) {
            continue;
        }
        let Some(o) = choose(source, model, None, offers) else {
            report.missing.push(model.clone());
            continue;
        };
        let slug: String = model
            .rsplit('/')
            .next()
            .unwrap_or(model)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let name = format!("{}-{slug}", source.preset());
        let mut t = Table::new();
        t.insert("name", value(name.as_str()));
        t.insert("provider", value(source.preset()));
        t.insert("model", value(model.as_str()));
        if source == Source::Hf {
            t.insert("routing", value("cheapest"));
        }
        set_offer(&mut t, source, o, date);
        targets.push(t);
        report.added.push(name);
    }
    report
}

fn set_offer(t: &mut Table, source: Source, o: &Offer, date: &str) {
    for (k, v) in [("price_in", o.price_in), ("price_out", o.price_out)] {
        match v {
            Some(p) => t.insert(k, value(p)),
            None => t.remove(k),
        };
    }
    t.insert("catalog", value(entry(source, o, date)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openrouter_prices_per_token_become_prices_per_million() {
        let v = serde_json::json!({"data": [{"id": "a/b", "context_length": 8192,
            "pricing": {"prompt": "0.00000002", "completion": "0.0000015"},
            "supported_parameters": ["tools"]}]});
        let o = &parse_openrouter(&v).unwrap()[0];
        assert_eq!((o.price_in, o.price_out), (Some(0.02), Some(1.5)));
        assert_eq!(o.supports_tools, Some(true));
        assert!(parse_openrouter(&serde_json::json!({"models": []})).is_err());
    }
}
