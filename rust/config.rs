//! A model's hyperparameters, wherever they were read from, and the one place they are
//! checked for consistency.

/// Hyperparameters of a LLaMA model (GGUF names in the comments).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `embedding_length`: width of the residual stream.
    pub dim: usize,
    /// `block_count`.
    pub n_layer: usize,
    /// `attention.head_count`: query heads.
    pub n_head: usize,
    /// `attention.head_count_kv`: key/value heads, each shared by `n_head / n_head_kv` query heads.
    pub n_head_kv: usize,
    /// `feed_forward_length`: hidden width of the SwiGLU feed-forward.
    pub ffn_dim: usize,
    pub n_vocab: usize,
    /// Context length the model was trained with (the default for n_ctx is smaller).
    pub train_ctx: usize,
    /// `rope.dimension_count`: leading components of each head that are rotated.
    pub n_rot: usize,
    /// `attention.layer_norm_rms_epsilon`.
    pub rms_eps: f32,
    /// `rope.freq_base`.
    pub freq_base: f32,
    /// 1 / `rope.scaling.factor` for linear scaling (position interpolation); 1 for none.
    pub freq_scale: f32,
}

/// Most layers a model may declare (a hostile count must not size huge allocations).
const MAX_LAYERS: usize = 4096;

impl Config {
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_head
    }

    pub fn kv_dim(&self) -> usize {
        self.head_dim() * self.n_head_kv
    }

    /// Whether the hyperparameters fit together; the message says which do not (the caller
    /// adds the file's name).
    pub fn validate(&self) -> Result<(), String> {
        let counts = [
            self.dim,
            self.n_layer,
            self.n_head,
            self.n_head_kv,
            self.ffn_dim,
            self.n_vocab,
            self.n_rot,
        ];
        if counts.contains(&0)
            || !self.dim.is_multiple_of(self.n_head)
            || !self.n_head.is_multiple_of(self.n_head_kv)
            || self.n_layer > MAX_LAYERS
        {
            return Err(format!(
                "inconsistent hyperparameters: embedding {}, {} heads, {} KV heads, {} layers, feed-forward {}, vocab {}",
                self.dim, self.n_head, self.n_head_kv, self.n_layer, self.ffn_dim, self.n_vocab
            ));
        }
        let head_dim = self.head_dim();
        if self.n_rot > head_dim || !self.n_rot.is_multiple_of(2) {
            return Err(format!(
                "rope dimension count {} does not fit head size {head_dim}",
                self.n_rot
            ));
        }
        if !(self.rms_eps.is_finite()
            && self.rms_eps > 0.0
            && self.freq_base.is_finite()
            && self.freq_base > 0.0
            && self.freq_scale.is_finite()
            && self.freq_scale > 0.0)
        {
            return Err(format!(
                "RMSNorm epsilon {}, rope frequency base {} and rope frequency scale {} must be positive numbers",
                self.rms_eps, self.freq_base, self.freq_scale
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_what_does_not_fit() {
        let ok = Config {
            dim: 64,
            n_layer: 2,
            n_head: 8,
            n_head_kv: 4,
            ffn_dim: 172,
            n_vocab: 512,
            train_ctx: 512,
            n_rot: 8,
            rms_eps: 1e-5,
            freq_base: 10000.0,
            freq_scale: 1.0,
        };
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!((ok.head_dim(), ok.kv_dim()), (8, 32));
        let bad = |c: Config| c.validate().unwrap_err();
        assert!(bad(Config {
            n_head: 3,
            ..ok.clone()
        })
        .starts_with("inconsistent hyperparameters"));
        assert!(bad(Config {
            n_head_kv: 3,
            ..ok.clone()
        })
        .starts_with("inconsistent hyperparameters"));
        assert!(bad(Config {
            n_head_kv: 0,
            ..ok.clone()
        })
        .starts_with("inconsistent hyperparameters"));
        assert!(bad(Config {
            n_layer: 5000,
            ..ok.clone()
        })
        .starts_with("inconsistent hyperparameters"));
        assert!(bad(Config {
            n_rot: 10,
            ..ok.clone()
        })
        .contains("does not fit head size 8"));
        assert!(bad(Config {
            n_rot: 7,
            ..ok.clone()
        })
        .contains("does not fit"));
        assert!(bad(Config {
            rms_eps: 0.0,
            ..ok.clone()
        })
        .contains("epsilon"));
        assert!(bad(Config {
            freq_scale: f32::NAN,
            ..ok.clone()
        })
        .contains("frequency scale NaN"));
    }
}
