//! The super-network's selection: an all-k assignment reproduces the model calibrated at
//! bit-width k exactly; a mixed one lies between; per-step rows switch by step.

use burn::tensor::Device;
use dmq_calib::{CalibSet, PtqOptions, QuantConfig, RecordOptions, ptq};
use dmq_models::scheduler::{DdimConfig, DdimScheduler};
use dmq_models::unet::UNet2DModel;
use dmq_models::{Denoiser, ForwardCtx, HostTensor};
use dmq_quant::RangeInit;
use dmq_search::{Candidate, SearchSpace, SuperNet, layer_slots, timestep_groups};

fn tiny_unet(device: &Device) -> UNet2DModel {
    UNet2DModel::new(&dmq_models::defaults::tiny_unet().unwrap(), device).unwrap()
}

fn out(m: &dyn Denoiser, calib: &CalibSet, device: &Device) -> Vec<f32> {
    let idx = calib.indices_at_step(1);
    let (x, t, c) = calib.batch(&idx, device).unwrap();
    let y = m
        .forward(x, t, c, &ForwardCtx::new(calib.step_context(1)))
        .unwrap();
    HostTensor::from_tensor(&y).data
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let n: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let d: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (n / d.max(1e-30)).sqrt()
}

fn selection(device: &Device) {
    let fp = tiny_unet(device);
    let sched = DdimScheduler::diffusers(&DdimConfig::new(), 4).unwrap();
    let calib = CalibSet::record(
        &fp,
        &sched,
        &RecordOptions {
            trajectories: 4,
            steps_kept: 4,
            batch: 4,
            ..RecordOptions::default()
        },
        device,
    )
    .unwrap();
    // the reference code's max ranges (the super-network uses the options it is given)
    let opts = PtqOptions {
        act_samples: 4,
        weight_init: RangeInit::Max,
        act_init: RangeInit::Max,
        ..PtqOptions::default()
    };
    let mut seen = Vec::new();
    let net =
        SuperNet::calibrate(&fp, &[8, 4], &calib, &opts, device, &mut |b| seen.push(b)).unwrap();
    assert_eq!(seen, vec![8, 4]);
    let space = SearchSpace::new(
        timestep_groups(4, 1000).unwrap(),
        layer_slots(&fp),
        vec![8, 4],
        false,
    )
    .unwrap();
    // Direct calibration at W8A8 and W4A4 with the same options.
    let direct = |b: u32| {
        let mut m = fp.clone();
        let o = opts.clone();
        ptq(
            &mut m,
            &QuantConfig::wa(Some(b), Some(b)).unwrap(),
            &calib,
            &o,
            device,
        )
        .unwrap();
        out(&m, &calib, device)
    };
    let (y8, y4, yfp) = (direct(8), direct(4), out(&fp, &calib, device));
    let mut m = fp.clone();
    net.apply(&mut m, &space, &space.uniform(0).unwrap(), 0)
        .unwrap();
    assert!(rel(&out(&m, &calib, device), &y8) < 1e-6);
    net.apply(&mut m, &space, &space.uniform(1).unwrap(), 0)
        .unwrap();
    assert!(rel(&out(&m, &calib, device), &y4) < 1e-6);
    // Mixed: 8-bit weights, 4-bit inputs everywhere.
    let genes = space.genes();
    let mixed = Candidate {
        timesteps: space.uniform(0).unwrap().timesteps,
        bits: vec![(0..genes).map(|g| (g % 2) as u8).collect()],
    };
    net.apply(&mut m, &space, &mixed, 0).unwrap();
    let ym = out(&m, &calib, device);
    let (e8, e4, em) = (rel(&y8, &yfp), rel(&y4, &yfp), rel(&ym, &yfp));
    assert!(
        e8 < em && em < e4 * 1.5 && rel(&ym, &y4) > 1e-4,
        "{e8} {em} {e4}"
    );

    // Per step: row 1 is all-4, row 0 all-8.
    let ps =
        SearchSpace::new(space.groups.clone(), space.layers.clone(), vec![8, 4], true).unwrap();
    let mut c = ps.uniform(0).unwrap();
    c.bits[1] = vec![1; genes];
    net.apply(&mut m, &ps, &c, 1).unwrap();
    assert!(rel(&out(&m, &calib, device), &y4) < 1e-6);
    net.apply(&mut m, &ps, &c, 0).unwrap();
    assert!(rel(&out(&m, &calib, device), &y8) < 1e-6);
    // A candidate of another space is refused.
    assert!(net.apply(&mut m, &space, &c, 0).is_err());
}

#[test]
fn selection_flex() {
    selection(&Device::flex());
}
