//! Temporary: AEAD candidates on 4 MiB buffers, one thread.
use std::time::Instant;

fn main() {
    let mut data = vec![7u8; 4 << 20];
    let rounds = 200;
    let total = (data.len() * rounds) as f64 / 1e9;
    // aws-lc-rs AES-256-GCM
    {
        use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[1u8; 32]).unwrap());
        let t = Instant::now();
        for i in 0..rounds {
            let mut n = [0u8; 12];
            n[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let _tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(n),
                    Aad::from(b"ad"),
                    &mut data,
                )
                .unwrap();
        }
        println!(
            "aws-lc-rs aes-256-gcm      {:.2} GB/s",
            total / t.elapsed().as_secs_f64()
        );
    }
    {
        use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
        let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[1u8; 32]).unwrap());
        let t = Instant::now();
        for i in 0..rounds {
            let mut n = [0u8; 12];
            n[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let _tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(n),
                    Aad::from(b"ad"),
                    &mut data,
                )
                .unwrap();
        }
        println!(
            "aws-lc-rs chacha20poly1305 {:.2} GB/s",
            total / t.elapsed().as_secs_f64()
        );
    }
    {
        use aes_gcm::aead::{AeadInPlace, KeyInit};
        let cipher = aes_gcm::Aes256Gcm::new(&[1u8; 32].into());
        let t = Instant::now();
        for i in 0..rounds {
            let mut n = [0u8; 12];
            n[..8].copy_from_slice(&(i as u64).to_le_bytes());
            cipher
                .encrypt_in_place_detached(&n.into(), b"ad", &mut data)
                .unwrap();
        }
        println!(
            "RustCrypto aes-gcm         {:.2} GB/s",
            total / t.elapsed().as_secs_f64()
        );
    }
    {
        use chacha20poly1305::aead::{AeadInPlace, KeyInit};
        let cipher = chacha20poly1305::XChaCha20Poly1305::new(&[1u8; 32].into());
        let t = Instant::now();
        for i in 0..rounds {
            let mut n = [0u8; 24];
            n[..8].copy_from_slice(&(i as u64).to_le_bytes());
            cipher
                .encrypt_in_place_detached(&n.into(), b"ad", &mut data)
                .unwrap();
        }
        println!(
            "RustCrypto xchacha20poly1305 {:.2} GB/s",
            total / t.elapsed().as_secs_f64()
        );
    }
    {
        let t = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(blake3::keyed_hash(&[1u8; 32], &data));
        }
        println!(
            "blake3 keyed (reference)   {:.2} GB/s",
            total / t.elapsed().as_secs_f64()
        );
    }
}
