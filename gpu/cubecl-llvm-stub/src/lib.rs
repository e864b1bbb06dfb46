//! The part of cubecl-llvm's interface that cubecl-cuda names, without LLVM.
//!
//! cubecl-cuda holds an LLVM backend beside its CUDA C++ one and always compiles both; the `cpp`
//! feature makes CUDA C++ through NVRTC the one it runs. switchyard's offline CUDA build turns
//! `cpp` on, so nothing here runs on the kernel path. If something did ask for the LLVM backend,
//! [`PlironCompiler::compile`] answers with an error naming this stub rather than a wrong kernel.

use cubecl_environment::backtrace::BackTrace;
use cubecl_runtime::compiler::{CompilationError, Compiler};
use cubecl_runtime::kernel::{BufferIOAttr, KernelDefinition};

/// The targets the real crate lowers to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LlvmTarget {
    #[default]
    Cpu,
    AmdGpu,
    Nvptx,
}

/// The options cubecl-cuda fills in for the LLVM backend; read by nothing here.
#[derive(Clone, Debug, Default)]
pub struct PlironOptions {
    pub arch: Option<cubecl_core::ir::amd::GfxArch>,
    #[cfg(feature = "nvptx")]
    pub sm_arch: Option<cubecl_core::ir::nvidia::SmArch>,
    #[cfg(feature = "nvptx")]
    pub ptx_version: Option<nvptx::ptx_version::PtxVersion>,
    pub grid_constants: bool,
}

/// A PTX module as the LLVM backend would hand it over.
#[derive(Clone, Debug)]
pub struct NvptxModule {
    pub ptx: Vec<core::ffi::c_char>,
    pub entrypoint: String,
    pub ir: String,
    pub shared_memory_size: usize,
    pub io: Vec<BufferIOAttr>,
}

/// What the LLVM backend produces; this build never produces one.
#[derive(Clone, Debug)]
pub enum PlironArtifact {
    NvptxCode(NvptxModule),
}

impl core::fmt::Display for PlironArtifact {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PlironArtifact::NvptxCode(module) => f.write_str(&module.ir),
        }
    }
}

/// The LLVM backend's compiler, which in this build refuses every kernel.
#[derive(Clone, Debug, Default)]
pub struct PlironCompiler {
    pub target: LlvmTarget,
}

impl Compiler for PlironCompiler {
    type Representation = PlironArtifact;
    type CompilationOptions = PlironOptions;

    fn compile(
        &mut self,
        _kernel: KernelDefinition,
        _options: &Self::CompilationOptions,
    ) -> Result<Self::Representation, CompilationError> {
        Err(CompilationError::Generic {
            reason: "this CUDA build has no LLVM backend (switchyard's offline build replaces \
                     cubecl-llvm with a stub); it compiles kernels with NVRTC, cubecl-cuda's \
                     `cpp` feature, which must be on"
                .to_string(),
            backtrace: BackTrace::capture(),
        })
    }

    fn extension(&self) -> &'static str {
        "ll"
    }

    fn lang_tag(&self) -> &'static str {
        "llvm"
    }
}

pub mod nvptx {
    pub mod ptx_version {
        /// The PTX version the LLVM backend would emit for a driver. cubecl-cuda asks for it on
        /// every device and keys the LLVM backend's kernel cache with it; the NVRTC path, the
        /// only one here, ignores it. This stub keeps the driver's own version number
        /// (`cuDriverGetVersion`, 13.0 is `13000`), so the key still changes with the driver.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub struct PtxVersion(i32);

        impl PtxVersion {
            /// `None` for a driver older than CUDA 10, as the real crate answers.
            pub fn for_driver(driver: i32) -> Option<Self> {
                (driver >= 10_000).then_some(Self(driver))
            }
        }

        impl core::fmt::Display for PtxVersion {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, "ptx-driver{}", self.0)
            }
        }
    }
}

pub mod shared {
    pub mod lowered_features {
        use cubecl_core::ir::DeviceProperties;

        /// The GPU targets whose advertised features the LLVM backend narrows.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum GpuTarget {
            Nvptx,
            AmdGpu,
        }

        /// The real crate takes away the features its LLVM lowering lacks; cubecl-cuda calls it
        /// only when that backend is selected, which this build never does, so nothing is
        /// narrowed.
        pub fn restrict_features(_props: &mut DeviceProperties, _target: GpuTarget) {}
    }
}
