//! What a tensor's name says about it: which transformer layer it belongs to and what kind of
//! weight it is. Used for layer counts, streaming estimates and per-role breakdowns.

/// The coarse kind of a weight, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Embedding,
    Attention,
    Mlp,
    Norm,
    Other,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Embedding => "embeddings",
            Role::Attention => "attention",
            Role::Mlp => "mlp",
            Role::Norm => "norms",
            Role::Other => "other",
        }
    }
}

/// The layer index in names like `model.layers.12.mlp...`, `encoder.layer.3...`, `h.7...`,
/// `blk.4...`, `blocks.2...`.
pub fn layer_index(name: &str) -> Option<usize> {
    let parts: Vec<&str> = name.split('.').collect();
    parts.windows(2).find_map(|w| {
        matches!(w[0], "layers" | "layer" | "h" | "blk" | "blocks" | "block")
            .then(|| w[1].parse().ok())
            .flatten()
    })
}

/// The name with its layer index replaced by `*` (`model.layers.*.input_layernorm.weight`):
/// the same weight across layers shares this key. `None` outside the layers.
pub fn layer_key(name: &str) -> Option<String> {
    let parts: Vec<&str> = name.split('.').collect();
    let at = parts.windows(2).position(|w| {
        matches!(w[0], "layers" | "layer" | "h" | "blk" | "blocks" | "block")
            && w[1].parse::<usize>().is_ok()
    })?;
    let mut key: Vec<&str> = parts.clone();
    key[at + 1] = "*";
    Some(key.join("."))
}

pub fn role(name: &str) -> Role {
    let n = name.to_ascii_lowercase();
    if n.contains("norm") || n.ends_with("ln_f.weight") || n.contains(".ln_") {
        Role::Norm
    } else if n.contains("embed") || n.contains("wte") || n.contains("wpe") || n.contains("lm_head")
    {
        Role::Embedding
    } else if n.contains("attn")
        || n.contains("attention")
        || n.contains("q_proj")
        || n.contains("k_proj")
        || n.contains("v_proj")
        || n.contains("o_proj")
    {
        Role::Attention
    } else if n.contains("mlp")
        || n.contains("ffn")
        || n.contains("intermediate")
        || n.contains("feed_forward")
        || n.contains(".output.dense")
        || n.contains("experts")
    {
        Role::Mlp
    } else {
        Role::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_keys_take_out_the_index() {
        assert_eq!(
            layer_key("model.layers.12.input_layernorm.weight").as_deref(),
            Some("model.layers.*.input_layernorm.weight")
        );
        assert_eq!(
            layer_key("encoder.layer.3.output.LayerNorm.bias").as_deref(),
            Some("encoder.layer.*.output.LayerNorm.bias")
        );
        assert_eq!(layer_key("model.norm.weight"), None);
        assert_eq!(layer_key("model.layers.x.w"), None);
    }

    #[test]
    fn layers_and_roles_from_names() {
        assert_eq!(layer_index("model.layers.12.mlp.up_proj.weight"), Some(12));
        assert_eq!(
            layer_index("encoder.layer.3.attention.self.query.weight"),
            Some(3)
        );
        assert_eq!(layer_index("model.embed_tokens.weight"), None);
        assert_eq!(
            role("model.layers.0.self_attn.q_proj.weight"),
            Role::Attention
        );
        assert_eq!(role("model.layers.0.input_layernorm.weight"), Role::Norm);
        assert_eq!(role("model.embed_tokens.weight"), Role::Embedding);
        assert_eq!(role("model.layers.0.mlp.down_proj.weight"), Role::Mlp);
        assert_eq!(
            role("encoder.layer.0.attention.output.LayerNorm.bias"),
            Role::Norm
        );
        assert_eq!(role("pooler.dense.bias"), Role::Other);
    }
}
