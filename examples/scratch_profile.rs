use std::time::Instant;
use burn::prelude::*;
fn bench(name: &str, f: impl Fn()) {
    for _ in 0..20 { f(); }
    let t = Instant::now();
    for _ in 0..500 { f(); }
    println!("{name}: {:.1} us", t.elapsed().as_secs_f64() * 1e6 / 500.0);
}
fn main() {
    let device = Device::flex();
    let w = Tensor::<2>::random([576, 1536], burn::tensor::Distribution::Default, &device);
    let wt = Tensor::<2>::random([1536, 576], burn::tensor::Distribution::Default, &device);
    let x = Tensor::<2>::random([1, 576], burn::tensor::Distribution::Default, &device);
    let xt = Tensor::<2>::random([576, 1], burn::tensor::Distribution::Default, &device);
    bench("x@W [in,out]", || { let _ = x.clone().matmul(w.clone()).into_data(); });
    bench("Wt@xt [out,in]", || { let _ = wt.clone().matmul(xt.clone()).into_data(); });
    bench("linear x W", || { let _ = burn::tensor::module::linear(x.clone(), w.clone(), None).into_data(); });
    let x3 = Tensor::<3>::random([1, 1, 576], burn::tensor::Distribution::Default, &device);
    bench("linear 3d", || { let _ = burn::tensor::module::linear(x3.clone(), w.clone(), None).into_data(); });
    // host dot-product matvec for comparison
    let wv: Vec<f32> = wt.to_data().try_to_vec().unwrap();
    let xv: Vec<f32> = xt.to_data().try_to_vec().unwrap();
    bench("host matvec 1 thread", || {
        let out: Vec<f32> = wv.chunks(576).map(|r| r.iter().zip(&xv).map(|(a, b)| a * b).sum()).collect();
        std::hint::black_box(out);
    });
    use rayon::prelude::*;
    bench("host matvec rayon", || {
        let out: Vec<f32> = wv.par_chunks(576).map(|r| r.iter().zip(&xv).map(|(a, b)| a * b).sum()).collect();
        std::hint::black_box(out);
    });
    let big = Tensor::<2>::random([49152, 576], burn::tensor::Distribution::Default, &device);
    bench("lm_head E@xt", || { let _ = big.clone().matmul(xt.clone()).into_data(); });
    let bv: Vec<f32> = big.to_data().try_to_vec().unwrap();
    bench("lm_head host rayon", || {
        let out: Vec<f32> = bv.par_chunks(576).map(|r| r.iter().zip(&xv).map(|(a, b)| a * b).sum()).collect();
        std::hint::black_box(out);
    });
}
