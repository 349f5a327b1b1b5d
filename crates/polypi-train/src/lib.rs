//! polypi-train: trains the networks the polypi engine runs and exports them as polypi model
//! files (design.md §5). Cited documents (`design.md`, `reference.md`, `sources.md`) are in the
//! repository's `docs/` folder.
//!
//! - [`data`]: IDX (MNIST, Fashion-MNIST) and CIFAR-10 binary loaders, normalisation, augmentation.
//! - [`folder`]: ImageNet-layout image folders (class folders of PNG / JPEG).
//! - [`layers`]: ReLU, X2Act (PASNet / PolyMPCNet), PILLAR's fixed degree-4 polynomial, PolyKerv
//!   (PolyKervNets / R-PKN).
//! - [`nets`]: NET-M, NET-C, NET-R18 of reference.md in every activation variant, by width, and
//!   the choice of every network.
//! - [`archnet`]: the seeds' networks (ResNet-18/34/50, ResNet-32/110, VGG-16-BN, MobileNetV2,
//!   PKR-18, PKV-16, PKA-8) built from polypi-core's architecture descriptions (`polypi zoo`'s).
//! - [`train`]: [`TrainConfig`] (defaults from the papers) and [`train()`], the training loop.
//! - [`polyfit`]: PILLAR's integer-coefficient least-squares fit of ReLU (`fit-poly`).
//! - [`export`]: conversion to `polypi_core::model::file::ModelFile` with a model card.
//! - [`report`]: metrics CSV and SVG plot.
//!
//! Built on burn 0.22 with its pure-Rust `flex` CPU backend; the crate feature `cuda` adds
//! `--device cuda`.
#![warn(missing_docs)]

pub mod archnet;
pub mod data;
pub mod export;
pub mod folder;
pub mod layers;
pub mod nets;
pub mod polyfit;
pub mod report;
pub mod search;
pub mod sweep;
pub mod train;

pub use data::DatasetKind;
pub use layers::ActKind;
pub use nets::{NetKind, PoolKind};
pub use train::{train, DeviceKind, EpochMetrics, OptimKind, TrainConfig, TrainReport};
