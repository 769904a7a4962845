//! ggml's tensor types as the file format numbers them (ggml.h `enum ggml_type`, block sizes
//! from ggml-common.h), whether or not this build has kernels for them.
//!
//! [`GgmlType`] is what this build can compute with; [`TypeId`] is what a file or the
//! quantization policy can name. The policy and `info` speak `TypeId`, and [`TypeId::kernel`]
//! is the one place where a name becomes a type we run (or the error that we do not).

use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// A ggml type id (the number stored in GGUF tensor infos).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TypeId(pub u32);

/// What the format says about one type: its name, elements per block, bytes per block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traits {
    pub name: &'static str,
    pub block_size: u32,
    pub type_size: u32,
}

const fn t(name: &'static str, block_size: u32, type_size: u32) -> Option<Traits> {
    Some(Traits {
        name,
        block_size,
        type_size,
    })
}

/// Indexed by id; `None` for ids ggml has retired (Q4_2, Q4_3, the repacked Q4_0_x_y, ...).
const TABLE: [Option<Traits>; 36] = [
    t("F32", 1, 4),
    t("F16", 1, 2),
    t("Q4_0", 32, 18),
    t("Q4_1", 32, 20),
    None, // Q4_2, removed
    None, // Q4_3, removed
    t("Q5_0", 32, 22),
    t("Q5_1", 32, 24),
    t("Q8_0", 32, 34),
    t("Q8_1", 32, 36),
    t("Q2_K", 256, 84),
    t("Q3_K", 256, 110),
    t("Q4_K", 256, 144),
    t("Q5_K", 256, 176),
    t("Q6_K", 256, 210),
    t("Q8_K", 256, 292),
    t("IQ2_XXS", 256, 66),
    t("IQ2_XS", 256, 74),
    t("IQ3_XXS", 256, 98),
    t("IQ1_S", 256, 50),
    t("IQ4_NL", 32, 18),
    t("IQ3_S", 256, 110),
    t("IQ2_S", 256, 82),
    t("IQ4_XS", 256, 136),
    t("I8", 1, 1),
    t("I16", 1, 2),
    t("I32", 1, 4),
    t("I64", 1, 8),
    t("F64", 1, 8),
    t("IQ1_M", 256, 56),
    t("BF16", 1, 2),
    None, // Q4_0_4_4, removed from files
    None, // Q4_0_4_8
    None, // Q4_0_8_8
    t("TQ1_0", 256, 54),
    t("TQ2_0", 256, 66),
];

impl TypeId {
    pub const F32: TypeId = TypeId(0);
    pub const F16: TypeId = TypeId(1);
    pub const Q4_0: TypeId = TypeId(2);
    pub const Q4_1: TypeId = TypeId(3);
    pub const Q5_0: TypeId = TypeId(6);
    pub const Q5_1: TypeId = TypeId(7);
    pub const Q8_0: TypeId = TypeId(8);
    pub const Q2_K: TypeId = TypeId(10);
    pub const Q3_K: TypeId = TypeId(11);
    pub const Q4_K: TypeId = TypeId(12);
    pub const Q5_K: TypeId = TypeId(13);
    pub const Q6_K: TypeId = TypeId(14);
    pub const IQ4_NL: TypeId = TypeId(20);
    pub const IQ4_XS: TypeId = TypeId(23);
    pub const BF16: TypeId = TypeId(30);

    /// Every id the table knows, in id order.
    pub fn all() -> impl Iterator<Item = TypeId> {
        (0..TABLE.len() as u32)
            .map(TypeId)
            .filter(|t| t.traits().is_some())
    }

    pub fn traits(self) -> Option<Traits> {
        TABLE.get(self.0 as usize).copied().flatten()
    }

    /// ggml's name ("Q4_K"), or "type N" for an id ggml does not (or no longer) define.
    pub fn name(self) -> String {
        match self.traits() {
            Some(t) => t.name.to_string(),
            None => format!("type {}", self.0),
        }
    }

    /// The type with this (case-insensitive) ggml name.
    pub fn from_name(name: &str) -> Option<TypeId> {
        TypeId::all().find(|t| t.name().eq_ignore_ascii_case(name))
    }

    pub fn block_size(self) -> Option<u64> {
        self.traits().map(|t| t.block_size as u64)
    }

    /// Quantized in ggml's sense (`ggml_is_quantized`): blocks of more than one element.
    pub fn is_quantized(self) -> bool {
        self.block_size().is_some_and(|b| b > 1)
    }

    /// Whether rows of `n` elements are whole blocks of this type.
    pub fn fits_row(self, n: u64) -> bool {
        self.block_size().is_some_and(|b| n.is_multiple_of(b))
    }

    /// Bytes of a tensor of `n_elements` whose rows fit ([`TypeId::fits_row`]).
    pub fn bytes(self, n_elements: u64) -> Option<u64> {
        let t = self.traits()?;
        (n_elements / t.block_size as u64).checked_mul(t.type_size as u64)
    }

    /// Storage bits per element.
    pub fn bits_per_weight(self) -> Option<f64> {
        self.traits()
            .map(|t| 8.0 * t.type_size as f64 / t.block_size as f64)
    }

    /// The type this build computes with, or why not.
    pub fn kernel(self) -> Result<GgmlType> {
        GgmlType::from_id(self.0).ok_or_else(|| {
            Error::Invalid(format!(
                "type {} is not supported by this build (it has: {})",
                self.name(),
                GgmlType::ALL.map(|t| t.name()).join(", ")
            ))
        })
    }
}

impl From<GgmlType> for TypeId {
    fn from(t: GgmlType) -> TypeId {
        TypeId(t.id())
    }
}

impl std::fmt::Display for TypeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table agrees with every family this build implements (one truth for sizes).
    #[test]
    fn agrees_with_the_kernels() {
        for g in GgmlType::ALL {
            let t = TypeId::from(g).traits().unwrap();
            assert_eq!(t.name, g.name());
            assert_eq!(t.block_size as usize, g.block_size(), "{g}");
            assert_eq!(t.type_size as usize, g.type_size(), "{g}");
            assert_eq!(TypeId::from(g).kernel().unwrap(), g);
            assert_eq!(TypeId::from(g).is_quantized(), g.is_quantized(), "{g}");
        }
    }

    #[test]
    fn names_sizes_and_unknown_ids() {
        assert_eq!(TypeId::from_name("q6_k"), Some(TypeId::Q6_K));
        assert_eq!(TypeId::Q6_K.bits_per_weight(), Some(6.5625));
        assert_eq!(TypeId::IQ4_XS.bits_per_weight(), Some(4.25));
        assert_eq!(TypeId::Q4_K.bytes(4096 * 256), Some(4096 * 144));
        assert!(TypeId::Q4_K.fits_row(4096) && !TypeId::Q4_K.fits_row(11008 + 32));
        assert_eq!(TypeId(4).name(), "type 4");
        assert_eq!(TypeId(999).traits(), None);
        assert!(!TypeId(999).fits_row(32));
        assert!(TypeId::BF16.traits().is_some() && !TypeId::BF16.is_quantized());
    }
}
