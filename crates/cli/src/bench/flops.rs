//! Analytic FLOP counts of one forward pass, from the component's config and input shape.
//!
//! Counted: convolutions, linear layers and the two attention products (QKᵀ and scores·V), at
//! 2 FLOPs per multiply-add, the way `torch.utils.flop_counter` counts a diffusers model; norms,
//! activations, softmax and resizes are left out (they are memory-bound and comparatively
//! negligible). The counts follow diffusers' module structure, so achieved GFLOP/s compares
//! across implementations that compute the same network.

use tessera_engine::clip::ClipTextConfig;
use tessera_engine::unet::config::BlockKind;
use tessera_engine::unet::UNetConfig;
use tessera_engine::vae::VaeConfig;

/// A convolution with `cin` -> `cout` channels and a `k`x`k` kernel, producing `out` (h, w).
fn conv(batch: usize, cin: usize, cout: usize, k: usize, out: (usize, usize)) -> u64 {
    2 * (batch * out.0 * out.1 * cout * cin * k * k) as u64
}

/// A linear layer applied to `tokens` rows.
fn linear(tokens: usize, fin: usize, fout: usize) -> u64 {
    2 * (tokens * fin * fout) as u64
}

/// QKᵀ and scores·V for `queries` x `keys` positions, `width` = heads x head width.
fn attention(batch: usize, queries: usize, keys: usize, width: usize) -> u64 {
    2 * 2 * (batch * queries * keys * width) as u64
}

/// diffusers' `ResnetBlock2D`: two 3x3 convs, the time embedding projection when there is a
/// time embedding (UNet), and a 1x1 shortcut conv when the channel count changes.
fn resnet(batch: usize, cin: usize, cout: usize, temb: Option<usize>, hw: (usize, usize)) -> u64 {
    let mut f = conv(batch, cin, cout, 3, hw) + conv(batch, cout, cout, 3, hw);
    if let Some(t) = temb {
        f += linear(batch, t, cout);
    }
    if cin != cout {
        f += conv(batch, cin, cout, 1, hw);
    }
    f
}

/// What every UNet block needs besides its own channels and resolution.
struct UNetShape {
    batch: usize,
    temb: usize,
    cross_dim: usize,
    context_len: usize,
}

impl UNetShape {
    fn resnet(&self, cin: usize, cout: usize, hw: (usize, usize)) -> u64 {
        resnet(self.batch, cin, cout, Some(self.temb), hw)
    }

    /// `Transformer2DModel` over `c` channels: projections in and out (1x1 conv or linear,
    /// the same count), then per layer self-attention, cross-attention on the text context and
    /// a GEGLU feed-forward (c -> 2 x 4c, 4c -> c). Heads do not change the count: diffusers
    /// always splits exactly `c` channels among them.
    fn transformer(&self, c: usize, layers: usize, hw: (usize, usize)) -> u64 {
        let (b, n, m) = (self.batch, hw.0 * hw.1, self.context_len);
        let tokens = b * n;
        let self_attn = 4 * linear(tokens, c, c) + attention(b, n, n, c);
        let cross_attn =
            2 * linear(tokens, c, c) + 2 * linear(b * m, self.cross_dim, c) + attention(b, n, m, c);
        let ff = linear(tokens, c, 8 * c) + linear(tokens, 4 * c, c);
        2 * linear(tokens, c, c) + layers as u64 * (self_attn + cross_attn + ff)
    }
}

/// One UNet call on `batch` latents of `hw` (h, w) with a text context of `context_len` tokens.
pub fn unet(
    cfg: &UNetConfig,
    batch: usize,
    hw: (usize, usize),
    context_len: usize,
) -> Result<u64, String> {
    let ch = &cfg.block_out_channels;
    let n = ch.len();
    let s = UNetShape {
        batch,
        temb: cfg.time_embed_dim(),
        cross_dim: cfg.cross_attention_dim,
        context_len,
    };
    // Timestep MLP, per batch item (diffusers broadcasts the timestep to the batch first).
    let mut f = linear(batch, ch[0], s.temb) + linear(batch, s.temb, s.temb);
    if cfg.addition_embed_type.as_deref() == Some("text_time") {
        let input = cfg
            .projection_class_embeddings_input_dim
            .ok_or("text_time needs projection_class_embeddings_input_dim")?;
        f += linear(batch, input, s.temb) + linear(batch, s.temb, s.temb);
    }
    f += conv(batch, cfg.in_channels, ch[0], cfg.conv_in_kernel, hw);

    // Resolution of each level: a stride-2 conv with padding 1 rounds odd sizes up, and the
    // up path upsamples back to the exact size of the matching skip connection.
    let mut sizes = vec![hw];
    let mut cin = ch[0];
    for (i, spec) in cfg.down_specs()?.iter().enumerate() {
        let at = sizes[i];
        for j in 0..cfg.layers_per_block {
            f += s.resnet(cin, ch[i], at);
            if spec.kind == BlockKind::CrossAttn {
                f += s.transformer(ch[i], spec.transformer_layers[j], at);
            }
            cin = ch[i];
        }
        if i + 1 < n {
            let half = (at.0.div_ceil(2), at.1.div_ceil(2));
            f += conv(batch, ch[i], ch[i], 3, half);
            sizes.push(half);
        }
    }
    if cfg.mid_block_type.is_some() {
        let (_, layers) = cfg.mid_spec()?;
        let (c, at) = (ch[n - 1], sizes[n - 1]);
        f += 2 * s.resnet(c, c, at) + s.transformer(c, layers, at);
    }
    let rev: Vec<usize> = ch.iter().rev().copied().collect();
    let mut prev = rev[0];
    for (i, spec) in cfg.up_specs()?.iter().enumerate() {
        let (out, at) = (rev[i], sizes[n - 1 - i]);
        let skip_in = rev[(i + 1).min(n - 1)];
        for j in 0..=cfg.layers_per_block {
            // Skips come back in reverse: the block's own resnets' outputs, then the output
            // of the level below (the previous down block's downsampler or conv_in).
            let skip = if j == cfg.layers_per_block {
                skip_in
            } else {
                out
            };
            let res_in = if j == 0 { prev } else { out };
            f += s.resnet(res_in + skip, out, at);
            if spec.kind == BlockKind::CrossAttn {
                f += s.transformer(out, spec.transformer_layers[j], at);
            }
        }
        if i + 1 < n {
            f += conv(batch, out, out, 3, sizes[n - 2 - i]);
        }
        prev = out;
    }
    Ok(f + conv(batch, ch[0], cfg.out_channels, cfg.conv_out_kernel, hw))
}

/// The VAE mid block: resnet, single-head self-attention over every pixel (q, k, v and out
/// projections plus the two products), resnet.
fn vae_mid(cfg: &VaeConfig, batch: usize, c: usize, hw: (usize, usize)) -> u64 {
    let mut f = 2 * resnet(batch, c, c, None, hw);
    if cfg.mid_block_add_attention {
        let n = hw.0 * hw.1;
        f += 4 * linear(batch * n, c, c) + attention(batch, n, n, c);
    }
    f
}

/// `AutoencoderKl::encode` of `batch` images of `hw` pixels: the encoder and `quant_conv`.
pub fn vae_encode(cfg: &VaeConfig, batch: usize, hw: (usize, usize)) -> u64 {
    let ch = &cfg.block_out_channels;
    let n = ch.len();
    let mut at = hw;
    let mut f = conv(batch, cfg.in_channels, ch[0], 3, at);
    let mut cin = ch[0];
    for (i, &c) in ch.iter().enumerate() {
        for _ in 0..cfg.layers_per_block {
            f += resnet(batch, cin, c, None, at);
            cin = c;
        }
        if i + 1 < n {
            // Padded by one row and column at the bottom right, then a stride-2 3x3 conv:
            // odd sizes round down.
            at = (at.0 / 2, at.1 / 2);
            f += conv(batch, c, c, 3, at);
        }
    }
    let moments = 2 * cfg.latent_channels;
    f += vae_mid(cfg, batch, ch[n - 1], at) + conv(batch, ch[n - 1], moments, 3, at);
    if cfg.use_quant_conv {
        f += conv(batch, moments, moments, 1, at);
    }
    f
}

/// `AutoencoderKl::decode` of `batch` latents of `hw`: `post_quant_conv` and the decoder.
pub fn vae_decode(cfg: &VaeConfig, batch: usize, hw: (usize, usize)) -> u64 {
    let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
    let n = rev.len();
    let latent = cfg.latent_channels;
    let mut at = hw;
    let mut f = 0;
    if cfg.use_post_quant_conv {
        f += conv(batch, latent, latent, 1, at);
    }
    f += conv(batch, latent, rev[0], 3, at) + vae_mid(cfg, batch, rev[0], at);
    let mut cin = rev[0];
    for (i, &c) in rev.iter().enumerate() {
        for _ in 0..=cfg.layers_per_block {
            f += resnet(batch, cin, c, None, at);
            cin = c;
        }
        if i + 1 < n {
            at = (at.0 * 2, at.1 * 2);
            f += conv(batch, c, c, 3, at);
        }
    }
    f + conv(batch, rev[n - 1], cfg.out_channels, 3, at)
}

/// A CLIP text encoder on `batch` x `seq` token ids: per layer the q, k, v and out projections,
/// the two attention products (over the full seq x seq square: the causal mask hides entries,
/// it does not skip them) and the MLP; then the text projection of the pooled token.
pub fn clip_text(cfg: &ClipTextConfig, batch: usize, seq: usize, projection: bool) -> u64 {
    let (c, tokens) = (cfg.hidden_size, batch * seq);
    let layer = 4 * linear(tokens, c, c)
        + attention(batch, seq, seq, c)
        + linear(tokens, c, cfg.intermediate_size)
        + linear(tokens, cfg.intermediate_size, c);
    let mut f = cfg.num_hidden_layers as u64 * layer;
    if projection {
        f += linear(batch, c, cfg.projection_dim);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unet_config(json: &str) -> UNetConfig {
        serde_json::from_str(json).unwrap()
    }

    /// A UNet small enough to count by hand: one level of 32 channels, no mid block, one
    /// resnet down and two up, batch 1 on a 2x3 latent (6 pixels).
    #[test]
    fn plain_unet_counted_by_hand() {
        let cfg = unet_config(
            r#"{"block_out_channels": [32], "down_block_types": ["DownBlock2D"],
                "up_block_types": ["UpBlock2D"], "layers_per_block": 1, "mid_block_type": null,
                "in_channels": 4, "out_channels": 4}"#,
        );
        let time_mlp = 2 * (32 * 128 + 128 * 128);
        let conv_in = 2 * 6 * 32 * 4 * 9;
        let conv_out = 2 * 6 * 4 * 32 * 9;
        // A resnet at 32 -> 32: two 3x3 convs and the 128 -> 32 time projection.
        let down = 2 * (2 * 6 * 32 * 32 * 9) + 2 * 128 * 32;
        // Up resnets take 32 + 32 skip channels: conv1 64 -> 32, conv2, time proj, 1x1 shortcut.
        let up = 2 * 6 * 32 * 64 * 9 + 2 * 6 * 32 * 32 * 9 + 2 * 128 * 32 + 2 * 6 * 32 * 64;
        let expected = time_mlp + conv_in + down + 2 * up + conv_out;
        assert_eq!(unet(&cfg, 1, (2, 3), 77).unwrap(), expected as u64);
    }

    /// One cross-attention transformer on 2 tokens of 32 channels, 3 context tokens of 16.
    #[test]
    fn transformer_counted_by_hand() {
        let s = UNetShape {
            batch: 1,
            temb: 128,
            cross_dim: 16,
            context_len: 3,
        };
        let proj = 2 * (2 * 2 * 32 * 32);
        let self_attn = 4 * (2 * 2 * 32 * 32) + 2 * (2 * 2 * 2 * 32);
        let cross = 2 * (2 * 2 * 32 * 32) + 2 * (2 * 3 * 16 * 32) + 2 * (2 * 2 * 3 * 32);
        let ff = 2 * 2 * 32 * 256 + 2 * 2 * 128 * 32;
        assert_eq!(
            s.transformer(32, 1, (1, 2)),
            (proj + self_attn + cross + ff) as u64
        );
        assert_eq!(
            s.transformer(32, 3, (1, 2)),
            (proj + 3 * (self_attn + cross + ff)) as u64
        );
    }

    /// A 2-layer CLIP: hidden 8, MLP 16, one sequence of 4 tokens, projection to 6.
    #[test]
    fn clip_counted_by_hand() {
        let cfg: ClipTextConfig = serde_json::from_str(
            r#"{"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
                "num_attention_heads": 2, "projection_dim": 6}"#,
        )
        .unwrap();
        let layer = 4 * (2 * 4 * 8 * 8) + 2 * (2 * 4 * 4 * 8) + 2 * (2 * 4 * 8 * 16);
        assert_eq!(clip_text(&cfg, 1, 4, false), 2 * layer);
        assert_eq!(clip_text(&cfg, 1, 4, true), 2 * layer + 2 * 8 * 6);
    }

    /// Counts of torch's own FLOP counter (`torch.utils.flop_counter.FlopCounterMode`) on the
    /// diffusers / transformers modules, real-size architectures included (built on the meta
    /// device, so nothing is computed); written by tests/fixtures/bench/flops.py.
    #[test]
    fn matches_torch_flop_counter() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/bench/flops.json"
        );
        let cases: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(cases.len() >= 10);
        for case in cases {
            let get =
                |k: &str| case[k].as_u64().unwrap_or_else(|| panic!("{k} in {case}")) as usize;
            let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(case["config"].as_str().unwrap());
            let text = std::fs::read_to_string(&config).unwrap();
            let (batch, hw) = (get("batch"), (get("height"), get("width")));
            let ours = match case["component"].as_str().unwrap() {
                "unet" => unet(
                    &serde_json::from_str(&text).unwrap(),
                    batch,
                    hw,
                    get("context_len"),
                )
                .unwrap(),
                "vae-encode" => vae_encode(&serde_json::from_str(&text).unwrap(), batch, hw),
                "vae-decode" => vae_decode(&serde_json::from_str(&text).unwrap(), batch, hw),
                "text" => {
                    let cfg: ClipTextConfig = serde_json::from_str(&text).unwrap();
                    let projection = cfg.declares_projection();
                    clip_text(&cfg, batch, get("seq"), projection)
                }
                other => panic!("unknown component {other}"),
            };
            assert_eq!(ours, case["flops"].as_u64().unwrap(), "{case}");
        }
    }
}
