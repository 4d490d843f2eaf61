//! Model prices (`tasks/prices.toml`): dollars per million tokens, looked up by model name.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// Dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Price {
    pub fn cost(&self, input: u64, output: u64) -> f64 {
        (input as f64 * self.input_per_mtok + output as f64 * self.output_per_mtok) / 1e6
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    #[serde(default)]
    models: BTreeMap<String, Price>,
}

/// Reads a price table (`[models."<name>"] input_per_mtok, output_per_mtok`); errors name the file.
pub(crate) fn load_prices(path: &Path) -> Result<BTreeMap<String, Price>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let f: PriceFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(f.models)
}

/// The price of a model: its exact name, else the longest listed name it starts with (dated
/// snapshots such as `gpt-4o-2024-08-06` take `gpt-4o`'s price).
pub(crate) fn price_of(prices: &BTreeMap<String, Price>, model: &str) -> Option<Price> {
    prices.get(model).copied().or_else(|| {
        prices
            .iter()
            .filter(|(k, _)| model.starts_with(k.as_str()))
            .max_by_key(|(k, _)| k.len())
            .map(|(_, p)| *p)
    })
}
