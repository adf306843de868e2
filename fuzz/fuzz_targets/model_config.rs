//! A checkpoint's config.json: the model name and shape, vocabularies and table sizes. One that
//! decodes must build its model with bounded memory (the sizes follow from the file itself).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use siren_model::models::build;
use siren_model::models::layers::Params;
use siren_model::train::CheckpointConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(cfg) = CheckpointConfig::decode(data, Path::new("config.json")) else {
        return;
    };
    let params = Params::new(0, &candle_core::Device::Cpu);
    let _ = build(&cfg.model, &cfg.dims, &params);
});
