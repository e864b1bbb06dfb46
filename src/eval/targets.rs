//! Which targets a run asks: names resolved to specs (from a targets file, the `local` model, or
//! `PRESET:MODEL`), plus every judge a suite's scorers name; each built once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::EvalError;
use super::suite::Suite;
use crate::providers::{Target, TargetSpec, TargetsFile};

#[derive(Debug, thiserror::Error)]
pub enum TargetsError {
    #[error(
        "unknown target `{name}`: not in {file}, not `{local}`, not PRESET:MODEL",
        file = describe_file(file.as_deref(), known)
    )]
    Unknown {
        name: String,
        file: Option<PathBuf>,
        known: Vec<String>,
        local: String,
    },
    #[error("target `{0}` is listed twice")]
    Twice(String),
    #[error("{suite}: judge: {source}")]
    Judge {
        suite: PathBuf,
        #[source]
        source: Box<TargetsError>,
    },
}

fn describe_file(file: Option<&std::path::Path>, known: &[String]) -> String {
    let file = file.map_or("a targets file".into(), |f| f.display().to_string());
    let known = if known.is_empty() {
        "none defined".into()
    } else {
        known.join(", ")
    };
    format!("{file} ({known})")
}

/// The targets a run can name: those of a targets file, and the local model under its name.
pub struct Catalog {
    file: Option<PathBuf>,
    defined: Vec<TargetSpec>,
    local: TargetSpec,
}

impl Catalog {
    /// `file`: a targets file (`[[targets]]`); `local`: the spec the name `local.name` stands
    /// for when the file does not define it.
    pub fn new(file: Option<PathBuf>, local: TargetSpec) -> Result<Self, EvalError> {
        let defined = match &file {
            Some(f) => TargetsFile::load(f)?,
            None => Vec::new(),
        };
        Ok(Self {
            file,
            defined,
            local,
        })
    }

    /// Targets given as specs (a pipeline's), with `local` standing for the local model.
    pub fn with(defined: Vec<TargetSpec>, local: TargetSpec) -> Self {
        Self {
            file: None,
            defined,
            local,
        }
    }

    /// The spec of one name: the file's, the local model's, or a quick `PRESET:MODEL`.
    pub fn find(&self, name: &str) -> Result<TargetSpec, TargetsError> {
        if let Some(t) = self.defined.iter().find(|t| t.name == name) {
            return Ok(t.clone());
        }
        if name == self.local.name {
            return Ok(self.local.clone());
        }
        TargetSpec::parse_quick(name).ok_or_else(|| TargetsError::Unknown {
            name: name.to_string(),
            file: self.file.clone(),
            known: self.defined.iter().map(|t| t.name.clone()).collect(),
            local: self.local.name.clone(),
        })
    }

    /// The specs of `names` (none: the local model), and of every judge the suites name.
    pub fn resolve(
        &self,
        names: &[String],
        suites: &[Suite],
    ) -> Result<(Vec<TargetSpec>, Vec<TargetSpec>), TargetsError> {
        let names = if names.is_empty() {
            vec![self.local.name.clone()]
        } else {
            names.to_vec()
        };
        let mut targets: Vec<TargetSpec> = Vec::new();
        for n in &names {
            if targets.iter().any(|t| &t.name == n) {
                return Err(TargetsError::Twice(n.clone()));
            }
            targets.push(self.find(n)?);
        }
        let mut judges: Vec<TargetSpec> = Vec::new();
        for s in suites {
            for j in s.scorers.iter().filter_map(|sc| sc.judge_target()) {
                if !judges.iter().any(|t| t.name == j) {
                    judges.push(self.find(j).map_err(|e| TargetsError::Judge {
                        suite: s.path.clone(),
                        source: Box::new(e),
                    })?);
                }
            }
        }
        Ok((targets, judges))
    }
}

/// Targets and judges built, each name once (a target that is also a judge is shared);
/// `announce` is told of each before it is built (loading a local model takes a while).
#[allow(clippy::type_complexity)]
pub fn build(
    targets: &[TargetSpec],
    judges: &[TargetSpec],
    mut announce: impl FnMut(&TargetSpec),
) -> Result<(Vec<Arc<Target>>, BTreeMap<String, Arc<Target>>), EvalError> {
    let mut built: BTreeMap<String, Arc<Target>> = BTreeMap::new();
    for spec in targets.iter().chain(judges) {
        if !built.contains_key(&spec.name) {
            announce(spec);
            built.insert(spec.name.clone(), Arc::new(Target::build(spec.clone())?));
        }
    }
    let t = targets.iter().map(|s| built[&s.name].clone()).collect();
    let j = judges
        .iter()
        .map(|s| (s.name.clone(), built[&s.name].clone()))
        .collect();
    Ok((t, j))
}
