//! Which machine a measurement came from. Tokens per second, latencies and speed ratios mean
//! little without the CPU behind them: on the project's own machines, the same build trains at
//! 283 tokens/s on one AMD EPYC and 518 on another (Zen 4 against Zen 5, both "AMD EPYC" to
//! `lscpu`). So benchmarks, training summaries, eval runs and pipeline records carry this
//! description: the CPU's name, vendor, family and model and the microarchitecture they name, the
//! vector extensions the kernels choose by (as the process detects them, which is what the
//! kernels see), logical CPUs and memory.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// The CPU's name as the OS gives it (`model name` in /proc/cpuinfo); "unknown" elsewhere.
    pub cpu: String,
    pub vendor: Option<String>,
    pub family: Option<u32>,
    pub model: Option<u32>,
    /// Named from vendor, family and model, where this table knows them. Virtual machines often
    /// hide the marketing name ("AMD EPYC"), but not the family and model.
    pub microarchitecture: Option<String>,
    /// The extensions switchyard's CPU kernels pick their code by, where present.
    pub features: Vec<String>,
    pub logical_cpus: usize,
    pub memory_gib: Option<f64>,
    pub os: String,
    pub arch: String,
}

/// The fields of the first processor in a /proc/cpuinfo text.
#[derive(Debug, Default, PartialEq)]
struct CpuInfo {
    name: Option<String>,
    vendor: Option<String>,
    family: Option<u32>,
    model: Option<u32>,
    flags: Vec<String>,
}

fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    for line in text.lines() {
        // Processors are separated by blank lines; the first one speaks for all.
        if line.trim().is_empty() && info.name.is_some() {
            break;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "model name" => info.name = Some(value.to_string()),
            "vendor_id" => info.vendor = Some(value.to_string()),
            "cpu family" => info.family = value.parse().ok(),
            "model" => info.model = value.parse().ok(),
            "flags" => info.flags = value.split_whitespace().map(str::to_string).collect(),
            _ => {}
        }
    }
    info
}

/// The microarchitecture a vendor, family and model name (the server parts these benchmarks
/// meet, and their client siblings); `None` where the table does not know the model.
fn microarchitecture(vendor: &str, family: u32, model: u32) -> Option<&'static str> {
    match (vendor, family) {
        ("AuthenticAMD", 0x17) if model < 0x30 => Some("Zen or Zen+"),
        ("AuthenticAMD", 0x17) => Some("Zen 2"),
        ("AuthenticAMD", 0x19) => match model {
            0x10..=0x1f | 0x60..=0x7f | 0xa0..=0xaf => Some("Zen 4"),
            _ => Some("Zen 3"),
        },
        ("AuthenticAMD", 0x1a) => Some("Zen 5"),
        ("GenuineIntel", 6) => match model {
            0x3f => Some("Haswell"),
            0x4f | 0x56 => Some("Broadwell"),
            0x55 => Some("Skylake-SP or Cascade Lake"),
            0x6a | 0x6c => Some("Ice Lake-SP"),
            0x8f => Some("Sapphire Rapids"),
            0xcf => Some("Emerald Rapids"),
            0xad | 0xae => Some("Granite Rapids"),
            0xaf => Some("Sierra Forest"),
            0x8e | 0x9e => Some("Kaby Lake or Coffee Lake"),
            0x97 | 0x9a => Some("Alder Lake"),
            0xb7 | 0xba | 0xbf => Some("Raptor Lake"),
            _ => None,
        },
        _ => None,
    }
}

/// The kernels' extensions as this process detects them (the CPU may have more than the OS or
/// hypervisor lets a process use), and AMX from the OS's flags (its detection is not stable in
/// Rust yet).
fn features(flags: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let detected = [
            ("avx2", has!("avx2")),
            ("fma", has!("fma")),
            ("avx512f", has!("avx512f")),
            ("avx512_vnni", has!("avx512vnni")),
            ("avx512_bf16", has!("avx512bf16")),
        ];
        out.extend(detected.iter().filter(|d| d.1).map(|d| d.0.to_string()));
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("neon") {
        out.push("neon".to_string());
    }
    for amx in ["amx_tile", "amx_bf16"] {
        if flags.iter().any(|f| f == amx) {
            out.push(amx.to_string());
        }
    }
    out
}

fn memory_gib(meminfo: &str) -> Option<f64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kib / (1024.0 * 1024.0) * 10.0).round() / 10.0)
}

fn describe_from(info: CpuInfo, flags_seen: Vec<String>, meminfo: &str) -> Machine {
    let microarchitecture = match (&info.vendor, info.family, info.model) {
        (Some(v), Some(f), Some(m)) => microarchitecture(v, f, m).map(str::to_string),
        _ => None,
    };
    Machine {
        cpu: info.name.unwrap_or_else(|| "unknown".to_string()),
        vendor: info.vendor,
        family: info.family,
        model: info.model,
        microarchitecture,
        features: flags_seen,
        logical_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_gib: memory_gib(meminfo),
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
    }
}

/// This machine, read once (from /proc on Linux; name, family and model are unknown elsewhere).
pub fn this() -> &'static Machine {
    static THIS: std::sync::OnceLock<Machine> = std::sync::OnceLock::new();
    THIS.get_or_init(|| {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let info = parse_cpuinfo(&cpuinfo);
        let flags = features(&info.flags);
        describe_from(info, flags, &meminfo)
    })
}

impl Machine {
    /// One line for a benchmark's header: "AMD EPYC (Zen 5, family 26 model 2), 2 logical CPUs,
    /// 23.4 GiB, avx2 fma avx512f avx512_vnni avx512_bf16".
    pub fn summary(&self) -> String {
        let mut about = Vec::new();
        if let Some(u) = &self.microarchitecture {
            about.push(u.clone());
        }
        if let (Some(f), Some(m)) = (self.family, self.model) {
            about.push(format!("family {f} model {m}"));
        }
        let mut s = self.cpu.clone();
        if !about.is_empty() {
            s.push_str(&format!(" ({})", about.join(", ")));
        }
        s.push_str(&format!(", {} logical CPUs", self.logical_cpus));
        if let Some(g) = self.memory_gib {
            s.push_str(&format!(", {g} GiB"));
        }
        if !self.features.is_empty() {
            s.push_str(&format!(", {}", self.features.join(" ")));
        }
        s
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZEN5: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n\
        model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n\
        vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\nmodel name\t: other\n";

    #[test]
    fn the_first_processor_names_the_machine() {
        let info = parse_cpuinfo(ZEN5);
        assert_eq!(info.name.as_deref(), Some("AMD EPYC"));
        assert_eq!(info.vendor.as_deref(), Some("AuthenticAMD"));
        assert_eq!((info.family, info.model), (Some(26), Some(2)));
        assert_eq!(info.flags, ["fpu", "avx2", "avx512f", "avx512_bf16"]);
        let m = describe_from(
            info,
            vec!["avx512_bf16".into()],
            "MemTotal:       24590000 kB\n",
        );
        assert_eq!(m.microarchitecture.as_deref(), Some("Zen 5"));
        assert_eq!(m.memory_gib, Some(23.5));
        let s = m.summary();
        assert!(
            s.starts_with("AMD EPYC (Zen 5, family 26 model 2), "),
            "{s}"
        );
        assert!(s.ends_with("23.5 GiB, avx512_bf16"), "{s}");
    }

    #[test]
    fn family_and_model_name_the_machines_seen() {
        let amd = "AuthenticAMD";
        assert_eq!(microarchitecture(amd, 25, 17), Some("Zen 4"));
        assert_eq!(microarchitecture(amd, 25, 1), Some("Zen 3"));
        assert_eq!(microarchitecture(amd, 26, 2), Some("Zen 5"));
        assert_eq!(microarchitecture(amd, 23, 49), Some("Zen 2"));
        let intel = "GenuineIntel";
        assert_eq!(microarchitecture(intel, 6, 143), Some("Sapphire Rapids"));
        assert_eq!(microarchitecture(intel, 6, 106), Some("Ice Lake-SP"));
        assert_eq!(
            microarchitecture(intel, 6, 85),
            Some("Skylake-SP or Cascade Lake")
        );
        assert_eq!(microarchitecture(intel, 6, 1), None);
        assert_eq!(microarchitecture("HygonGenuine", 24, 0), None);
    }

    #[test]
    fn amx_comes_from_the_os_flags_and_the_rest_from_detection() {
        let f = features(&["amx_tile".to_string(), "avx512f".to_string()]);
        assert!(f.contains(&"amx_tile".to_string()));
        assert!(!f.contains(&"amx_bf16".to_string()));
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            f.contains(&"avx512f".to_string()),
            std::arch::is_x86_feature_detected!("avx512f")
        );
    }

    #[test]
    fn a_machine_without_proc_files_is_unknown_not_an_error() {
        let m = describe_from(parse_cpuinfo(""), Vec::new(), "");
        assert_eq!(m.cpu, "unknown");
        assert_eq!(m.microarchitecture, None);
        assert_eq!(m.memory_gib, None);
        assert!(m.logical_cpus >= 1);
        assert!(m.summary().starts_with("unknown, "));
    }
}
