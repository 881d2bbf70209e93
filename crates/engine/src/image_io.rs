//! TEMPORARY (being replaced by the PIL-exact version): minimal image I/O for the pipeline.
use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

pub fn read(path: &std::path::Path) -> Result<RgbImage> {
    let img = image::open(path)
        .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))?
        .to_rgb8();
    Ok(RgbImage {
        width: img.width(),
        height: img.height(),
        data: img.into_raw(),
    })
}

pub fn preprocess(img: &RgbImage, scale_factor: usize, device: &Device) -> Result<Tensor> {
    let (w, h) = (img.width as usize, img.height as usize);
    if w % scale_factor != 0 || h % scale_factor != 0 {
        return Err(Error::InvalidInput("resize not written yet".into()));
    }
    let t =
        Tensor::from_vec(img.data.clone(), (h, w, 3), device)?.to_dtype(candle_core::DType::F32)?;
    let t = t.affine(2.0 / 255.0, -1.0)?;
    Ok(t.permute((2, 0, 1))?.unsqueeze(0)?)
}

pub fn to_unit_nhwc(x: &Tensor) -> Result<Tensor> {
    Ok(((x / 2.0)? + 0.5)?
        .clamp(0f32, 1f32)?
        .permute((0, 2, 3, 1))?)
}
