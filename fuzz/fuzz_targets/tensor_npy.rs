//! `.npy` files arrive from users (`fabnode submit --input x.npy`).
#![no_main]
use fab_inference::Tensor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Tensor::from_npy(data, 1 << 20) {
        let back = Tensor::from_npy(&t.to_npy(), 1 << 22).expect("own output parses");
        assert_eq!(back.digest(), t.digest());
    }
});
