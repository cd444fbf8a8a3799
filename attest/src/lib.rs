//! Attestations for kiln images: what an image contains (an SPDX 2.3 SBOM
//! built from the package databases in its files) and, wrapped in in-toto
//! statements, the documents BuildKit attaches to an image index.
//!
//! Nothing here runs anything from an image or touches the filesystem: the
//! caller hands in the files an image's layers leave at the paths
//! [`packages::wanted`] chooses (kiln reads them from the layers with
//! `kiln_store::layer::FileView`), and gets JSON back. Every input is
//! untrusted bytes from an image; parsers skip what they cannot read and
//! never panic.

#![forbid(unsafe_code)]

pub mod intoto;
pub mod license;
pub mod packages;
pub mod provenance;
pub mod purl;
pub mod spdx;

pub use packages::{find_packages, wanted, Ecosystem, Package};
