//! The UNet's down, mid and up blocks: resnets, optionally each followed by a spatial
//! transformer, and a 2x resampler between resolutions.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{BlockKind, BlockSpec, UNetConfig};
use super::resnet::{Downsample, ResnetBlock, ResnetSpec, Upsample};
use super::transformer::{SpatialTransformer, TransformerSpec};

/// Constructor arguments every block shares.
pub struct Common<'a> {
    pub cfg: &'a UNetConfig,
    pub temb: usize,
}

impl Common<'_> {
    fn resnet(&self, vb: VarBuilder, cin: usize, cout: usize, scale: f64) -> Result<ResnetBlock> {
        let spec = ResnetSpec {
            cin,
            cout,
            temb: Some(self.temb),
            groups: self.cfg.norm_num_groups,
            eps: self.cfg.norm_eps,
            output_scale_factor: scale,
        };
        ResnetBlock::new(vb, &spec)
    }

    fn transformer(
        &self,
        vb: VarBuilder,
        channels: usize,
        heads: usize,
        layers: usize,
    ) -> Result<SpatialTransformer> {
        let spec = TransformerSpec {
            channels,
            heads,
            layers,
            context_dim: self.cfg.cross_attention_dim,
            groups: self.cfg.norm_num_groups,
            linear_projection: self.cfg.use_linear_projection,
        };
        SpatialTransformer::new(vb, &spec)
    }
}

/// A resnet and, in cross-attention blocks, the transformer that follows it.
#[derive(Debug)]
struct Layer {
    resnet: ResnetBlock,
    attention: Option<SpatialTransformer>,
}

impl Layer {
    fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let h = self.resnet.forward(x, Some(temb))?;
        match &self.attention {
            Some(a) => a.forward(&h, context),
            None => Ok(h),
        }
    }
}

fn layer(
    c: &Common,
    vb: &VarBuilder,
    spec: &BlockSpec,
    i: usize,
    cin: usize,
    cout: usize,
) -> Result<Layer> {
    let resnet = c.resnet(
        vb.pp("resnets").pp(i),
        cin,
        cout,
        c.cfg.resnet_out_scale_factor,
    )?;
    let attention = match spec.kind {
        BlockKind::CrossAttn => Some(c.transformer(
            vb.pp("attentions").pp(i),
            cout,
            spec.heads,
            spec.transformer_layers[i],
        )?),
        BlockKind::Plain => None,
    };
    Ok(Layer { resnet, attention })
}

#[derive(Debug)]
pub struct DownBlock {
    layers: Vec<Layer>,
    downsample: Option<Downsample>,
}

impl DownBlock {
    pub fn new(
        c: &Common,
        vb: VarBuilder,
        spec: &BlockSpec,
        cin: usize,
        cout: usize,
        last: bool,
    ) -> Result<Self> {
        let layers = (0..c.cfg.layers_per_block)
            .map(|i| layer(c, &vb, spec, i, if i == 0 { cin } else { cout }, cout))
            .collect::<Result<_>>()?;
        let downsample = if last {
            None
        } else {
            Some(Downsample::new(
                vb.pp("downsamplers").pp(0),
                cout,
                c.cfg.downsample_padding,
            )?)
        };
        Ok(Self { layers, downsample })
    }

    /// Pushes every intermediate output onto `skips` (the up blocks consume them in reverse).
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for l in &self.layers {
            h = l.forward(&h, temb, context)?;
            skips.push(h.clone());
        }
        if let Some(d) = &self.downsample {
            h = d.forward(&h)?;
            skips.push(h.clone());
        }
        Ok(h)
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) pairs.
#[derive(Debug)]
pub struct MidBlock {
    first: ResnetBlock,
    rest: Vec<(SpatialTransformer, ResnetBlock)>,
}

impl MidBlock {
    pub fn new(c: &Common, vb: VarBuilder, channels: usize) -> Result<Self> {
        let (heads, layers) = c.cfg.mid_spec().map_err(candle_core::Error::msg)?;
        let scale = c.cfg.mid_block_scale_factor;
        let first = c.resnet(vb.pp("resnets").pp(0), channels, channels, scale)?;
        let pair = (
            c.transformer(vb.pp("attentions").pp(0), channels, heads, layers)?,
            c.resnet(vb.pp("resnets").pp(1), channels, channels, scale)?,
        );
        Ok(Self {
            first,
            rest: vec![pair],
        })
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let mut h = self.first.forward(x, Some(temb))?;
        for (attn, resnet) in &self.rest {
            h = resnet.forward(&attn.forward(&h, context)?, Some(temb))?;
        }
        Ok(h)
    }
}

#[derive(Debug)]
pub struct UpBlock {
    layers: Vec<Layer>,
    upsample: Option<Upsample>,
}

/// Channel counts of an up block: its output, the previous block's output, and the channels
/// of the down block it mirrors (for the skip connection of its last resnet).
pub struct UpChannels {
    pub prev: usize,
    pub cout: usize,
    pub skip_in: usize,
}

impl UpBlock {
    pub fn new(
        c: &Common,
        vb: VarBuilder,
        spec: &BlockSpec,
        ch: &UpChannels,
        last: bool,
    ) -> Result<Self> {
        let n = c.cfg.layers_per_block + 1;
        let layers = (0..n)
            .map(|i| {
                let skip = if i == n - 1 { ch.skip_in } else { ch.cout };
                let from = if i == 0 { ch.prev } else { ch.cout };
                layer(c, &vb, spec, i, from + skip, ch.cout)
            })
            .collect::<Result<_>>()?;
        let upsample = if last {
            None
        } else {
            Some(Upsample::new(vb.pp("upsamplers").pp(0), ch.cout)?)
        };
        Ok(Self { layers, upsample })
    }

    /// Pops this block's skip connections from `skips`, then upsamples to the size of the
    /// next one: 2x, except where an odd size was rounded up on the way down (diffusers'
    /// `forward_upsample_size`).
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for l in &self.layers {
            let skip = skips
                .pop()
                .ok_or_else(|| candle_core::Error::msg("unet: skip connections exhausted"))?;
            h = l.forward(&Tensor::cat(&[&h, &skip], 1)?, temb, context)?;
        }
        match (&self.upsample, skips.last()) {
            (Some(u), Some(next)) => {
                let (_, _, nh, nw) = next.dims4()?;
                u.forward(&h, (nh, nw))
            }
            _ => Ok(h),
        }
    }
}
