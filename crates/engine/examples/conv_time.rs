//! Times every implementation of `ops::Conv2d` (implicit GEMM, banded im2col, candle's conv2d)
//! on the convolutions of the SD 1.5 UNet (batch 3, as InstructPix2Pix's guidance runs it) and
//! the SD VAE (batch 1, 512 px image), CPU f32, and prints a markdown table with the kernel
//! `Conv2d::forward` picks. The figures behind the choice in `Conv2d::kernel_for` come from
//! it.
//!
//! `cargo run -p tessera-engine --example conv_time [FILTER...]` (the dev profile already
//! optimises the engine and its dependencies fully) runs the shapes whose name contains one of
//! the FILTERs, all without one.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use tessera_engine::ops::{Conv2d, ConvGeometry, ConvKernel};
use tessera_engine::weights::RandomWeights;

struct Shape {
    name: &'static str,
    batch: usize,
    cin: usize,
    cout: usize,
    size: usize,
    geometry: ConvGeometry,
}

const fn shape(
    name: &'static str,
    batch: usize,
    cin: usize,
    cout: usize,
    size: usize,
    geometry: ConvGeometry,
) -> Shape {
    Shape {
        name,
        batch,
        cin,
        cout,
        size,
        geometry,
    }
}

const SAME3: ConvGeometry = ConvGeometry::same(3);
const SAME1: ConvGeometry = ConvGeometry::same(1);
/// The UNet's `Downsample2D`.
const DOWN: ConvGeometry = ConvGeometry::symmetric(3, 2, 1);
/// The VAE encoder's downsampler: one zero row/column after, none before.
const VAE_DOWN: ConvGeometry = ConvGeometry {
    kernel: 3,
    stride: 2,
    pad_before: 0,
    pad_after: 1,
};

const SHAPES: &[Shape] = &[
    shape("unet conv_in 8->320 @64", 3, 8, 320, 64, SAME3),
    shape("unet 3x3 320 @64", 3, 320, 320, 64, SAME3),
    shape("unet 3x3 640 @32", 3, 640, 640, 32, SAME3),
    shape("unet 3x3 1280 @16", 3, 1280, 1280, 16, SAME3),
    shape("unet 3x3 1280 @8", 3, 1280, 1280, 8, SAME3),
    shape("unet 3x3 2560->1280 @16", 3, 2560, 1280, 16, SAME3),
    shape("unet conv_out 320->4 @64", 3, 320, 4, 64, SAME3),
    shape("sdxl conv_out 320->4 @128", 2, 320, 4, 128, SAME3),
    shape("unet 1x1 320 @64", 3, 320, 320, 64, SAME1),
    shape("unet 1x1 640->1280 @16", 3, 640, 1280, 16, SAME1),
    shape("unet down 320 @64", 3, 320, 320, 64, DOWN),
    shape("unet down 640 @32", 3, 640, 640, 32, DOWN),
    shape("unet down 1280 @16", 3, 1280, 1280, 16, DOWN),
    shape("vae conv_in 3->128 @512", 1, 3, 128, 512, SAME3),
    shape("vae 3x3 128 @512", 1, 128, 128, 512, SAME3),
    shape("vae 3x3 256 @512", 1, 256, 256, 512, SAME3),
    shape("vae 3x3 256 @256", 1, 256, 256, 256, SAME3),
    shape("vae 3x3 512 @256", 1, 512, 512, 256, SAME3),
    shape("vae 3x3 512 @128", 1, 512, 512, 128, SAME3),
    shape("vae 3x3 512 @64", 1, 512, 512, 64, SAME3),
    shape("vae conv_out 128->3 @512", 1, 128, 3, 512, SAME3),
    shape("vae encoder conv_out 512->8 @64", 1, 512, 8, 64, SAME3),
    shape("vae decoder conv_in 4->512 @64", 1, 4, 512, 64, SAME3),
    shape("vae 1x1 128->256 @256", 1, 128, 256, 256, SAME1),
    shape("vae 1x1 256->512 @128", 1, 256, 512, 128, SAME1),
    shape("vae down 128 @512", 1, 128, 128, 512, VAE_DOWN),
    shape("vae down 256 @256", 1, 256, 256, 256, VAE_DOWN),
    shape("vae down 512 @128", 1, 512, 512, 128, VAE_DOWN),
];

const KERNELS: [ConvKernel; 3] = [
    ConvKernel::ImplicitGemm,
    ConvKernel::Im2colBands,
    ConvKernel::Candle,
];

/// CPU time used so far by all threads of this process. On a loaded machine it shows what a
/// kernel costs better than the wall time, which also counts the time its threads wait for a
/// core; at one thread it is what the wall time would be on an idle machine.
#[cfg(unix)]
fn cpu_time() -> Option<Duration> {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `t` is.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    (status == 0).then(|| Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
}

#[cfg(not(unix))]
fn cpu_time() -> Option<Duration> {
    None
}

/// Best wall and CPU time of one kernel.
#[derive(Clone, Copy)]
struct Timing {
    wall: Duration,
    cpu: Option<Duration>,
}

/// The best times of each kernel (None where it cannot run the shape). The kernels run in
/// turns, one round after another, so that load from other processes during the measurement
/// hits them alike: a warm-up round, then rounds until 3 s have passed (at least 2, at most 10).
fn best_times(conv: &Conv2d, x: &Tensor) -> Vec<Option<Timing>> {
    let runs: Vec<bool> = KERNELS
        .iter()
        .map(|&k| conv.forward_with(x, k).is_ok())
        .collect();
    let mut best = vec![
        Timing {
            wall: Duration::MAX,
            cpu: cpu_time().map(|_| Duration::MAX),
        };
        KERNELS.len()
    ];
    let start = Instant::now();
    for round in 0..10 {
        if round >= 2 && start.elapsed() > Duration::from_secs(3) {
            break;
        }
        for (i, &kernel) in KERNELS.iter().enumerate().filter(|&(i, _)| runs[i]) {
            let (wall, cpu) = (Instant::now(), cpu_time());
            conv.forward_with(x, kernel)
                .expect("a kernel that ran once runs again");
            best[i].wall = best[i].wall.min(wall.elapsed());
            if let (Some(best), Some(before), Some(after)) = (&mut best[i].cpu, cpu, cpu_time()) {
                *best = (*best).min(after.saturating_sub(before));
            }
        }
    }
    best.into_iter()
        .zip(runs)
        .map(|(t, ran)| ran.then_some(t))
        .collect()
}

/// "wall ms (GFLOP/s) / CPU ms".
fn cell(timing: Option<Timing>, gflop: f64) -> String {
    let Some(t) = timing else {
        return "-".into();
    };
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
    let cpu = t.cpu.map_or("?".into(), ms);
    format!(
        "{} ({:.0}) / {cpu}",
        ms(t.wall),
        gflop / t.wall.as_secs_f64()
    )
}

fn main() -> candle_core::Result<()> {
    let filters: Vec<String> = std::env::args().skip(1).collect();
    let device = Device::Cpu;
    let weights = RandomWeights::new();
    let vb = weights.var_builder(DType::F32, &device);
    println!(
        "{} threads. Per call: wall ms (GFLOP/s) / CPU ms of all threads, each the best of \
         the runs.\n",
        candle_core::utils::get_num_threads()
    );
    println!("| shape | GFLOP | implicit GEMM | im2col bands | candle conv2d | forward picks |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (i, s) in SHAPES.iter().enumerate() {
        if !filters.is_empty() && !filters.iter().any(|f| s.name.contains(f.as_str())) {
            continue;
        }
        let conv = Conv2d::with_geometry(vb.pp(i), s.cin, s.cout, s.geometry)?;
        let x = Tensor::randn(0f32, 1.0, (s.batch, s.cin, s.size, s.size), &device)?;
        let out = s.geometry.output_len(s.size)?;
        let k = s.geometry.kernel;
        let gflop = 2.0 * (s.batch * s.cout * s.cin * k * k * out * out) as f64 / 1e9;
        let cells: Vec<String> = best_times(&conv, &x)
            .into_iter()
            .map(|t| cell(t, gflop))
            .collect();
        println!(
            "| {} | {gflop:.2} | {} | {:?} |",
            s.name,
            cells.join(" | "),
            conv.kernel_for(&x)?
        );
    }
    Ok(())
}
