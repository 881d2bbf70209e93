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

pub fn to_rgb8(x: &Tensor) -> Result<Vec<RgbImage>> {
    let (n, h, w, _) = x.dims4()?;
    let v: Vec<f32> = x.flatten_all()?.to_vec1()?;
    Ok((0..n)
        .map(|i| RgbImage {
            width: w as u32,
            height: h as u32,
            data: v[i * h * w * 3..(i + 1) * h * w * 3]
                .iter()
                .map(|f| (f * 255.0).round() as u8)
                .collect(),
        })
        .collect())
}

pub fn write_png(img: &RgbImage, path: &std::path::Path) -> Result<()> {
    image::save_buffer(
        path,
        &img.data,
        img.width,
        img.height,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))
}
