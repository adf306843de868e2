//! Micro-benchmarks of the hot paths below retrieval: column encode/decode, a zstd chunk read,
//! a prefix-bitmap lookup, and the dot products of soft retrieval (int8 as stored, against f16
//! and f32 for the same vectors). Inputs come from the synthetic lifelong generator.
//!
//! cargo bench -p siren-benches --bench micro

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use siren_engine::format::{
    decode_time, dot_i8, encode_packed, encode_time, quantize, read_chunk, write_chunk, Packed,
    PrefixIndex, PrefixIndexBuilder, PrefixLayout,
};
use siren_model::synth::{self, SynthConfig};

fn micro(c: &mut Criterion) {
    let cfg = SynthConfig {
        items: 20_000,
        ..SynthConfig::default()
    };
    let cat = synth::catalog(&cfg);
    let hist = synth::history(&cat, 7, 1, 100_000, 1_600_000_000_000);
    let ts: Vec<i64> = hist[..1024].iter().map(|e| e.ts).collect();
    let codes: Vec<u32> = hist[..1024]
        .iter()
        .map(|e| (e.item % 4096) as u32)
        .collect();

    let mut g = c.benchmark_group("column_block_1024");
    g.throughput(Throughput::Elements(1024));
    g.bench_function("time/encode", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            encode_time(black_box(&ts), &mut out);
            out
        })
    });
    let mut time_raw = Vec::new();
    encode_time(&ts, &mut time_raw);
    g.bench_function("time/decode", |b| {
        let mut out = Vec::with_capacity(1024);
        b.iter(|| {
            out.clear();
            decode_time(black_box(&time_raw), 1024, &mut out).unwrap();
            out.len()
        })
    });
    g.bench_function("item/encode", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            encode_packed(black_box(&codes), &mut out);
            out
        })
    });
    let mut item_raw = Vec::new();
    encode_packed(&codes, &mut item_raw);
    g.bench_function("item/decode", |b| {
        let mut out = Vec::with_capacity(1024);
        b.iter(|| {
            out.clear();
            Packed::parse(black_box(&item_raw), 1024, 32)
                .unwrap()
                .unpack(&mut out)
                .unwrap();
            out.len()
        })
    });
    // A chunk worth compressing: the four columns of a block together.
    let mut cols = time_raw.clone();
    cols.extend_from_slice(&item_raw);
    cols.extend(std::iter::repeat_n(0u8, 256));
    let mut chunk = Vec::new();
    write_chunk(&mut chunk, &cols, 3);
    g.bench_function("zstd_chunk/read", |b| {
        let mut scratch = Vec::new();
        b.iter(|| {
            read_chunk(black_box(&chunk), 1 << 20, &mut scratch)
                .unwrap()
                .len()
        })
    });
    g.finish();

    // A 100,000-event user's prefix index; look up one prefix at each depth.
    let layout = PrefixLayout::new(3, 256);
    let mut builder = PrefixIndexBuilder::default();
    let ids: std::collections::HashMap<u64, siren_engine::SemId> =
        cat.items.iter().map(|i| (i.id, i.semid.unwrap())).collect();
    for (p, e) in hist.iter().enumerate() {
        builder.add(&layout, p as u32, &ids[&e.item]);
    }
    let built = builder.finish(3);
    let index = PrefixIndex::new(&built.sparse, built.n_chunks, &built.chunks).unwrap();
    let target = ids[&hist[99_000].item];
    let mut g = c.benchmark_group("prefix_index_100k_events");
    for d in 1..=3 {
        g.bench_function(format!("lookup_depth_{d}"), |b| {
            b.iter(|| {
                let mut cache = Default::default();
                index
                    .find(layout.key(black_box(&target), d), &mut cache)
                    .unwrap()
                    .map_or(0, |bm| bm.len())
            })
        });
    }
    g.finish();

    // Dot products of 64-d (synthetic) and 384-d (MiniLM) vectors.
    let mut g = c.benchmark_group("dot_product");
    for dim in [64usize, 384] {
        let a: Vec<f32> = (0..dim)
            .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
            .collect();
        let b: Vec<f32> = (0..dim)
            .map(|i| ((i * 104_729) % 89) as f32 / 89.0 - 0.5)
            .collect();
        let (_, qa) = quantize(&a);
        let (_, qb) = quantize(&b);
        let ha: Vec<half::f16> = a.iter().map(|&x| half::f16::from_f32(x)).collect();
        let hb: Vec<half::f16> = b.iter().map(|&x| half::f16::from_f32(x)).collect();
        g.bench_function(format!("int8/{dim}"), |bn| {
            bn.iter(|| dot_i8(black_box(&qa), black_box(&qb)))
        });
        g.bench_function(format!("f16/{dim}"), |bn| {
            bn.iter(|| {
                black_box(&ha)
                    .iter()
                    .zip(black_box(&hb))
                    .map(|(x, y)| x.to_f32() * y.to_f32())
                    .sum::<f32>()
            })
        });
        g.bench_function(format!("f32/{dim}"), |bn| {
            bn.iter(|| {
                black_box(&a)
                    .iter()
                    .zip(black_box(&b))
                    .map(|(x, y)| x * y)
                    .sum::<f32>()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, micro);
criterion_main!(benches);
