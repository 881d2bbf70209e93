//! Prices: per input pixel, in USD or wei, as go-livepeer quotes them in `aiModels.json`
//! (`price_per_unit` for every `pixels_per_unit` pixels).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// The unit of a price. Prices in different currencies are never compared: a gateway's
/// maximum in USD says nothing about an orchestrator quoting wei.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub enum Currency {
    #[serde(rename = "USD")]
    Usd,
    /// go-livepeer's default when `currency` is left out.
    #[default]
    #[serde(rename = "wei")]
    Wei,
}

impl<'de> Deserialize<'de> for Currency {
    /// Case-insensitive, since go-livepeer's configs write both `USD` and `usd`.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.to_ascii_lowercase().as_str() {
            "usd" => Ok(Self::Usd),
            "wei" => Ok(Self::Wei),
            _ => Err(serde::de::Error::custom(format!(
                "unknown currency '{s}': expected USD or wei"
            ))),
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Usd => "USD",
            Self::Wei => "wei",
        })
    }
}

/// A price for one input pixel.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PixelPrice {
    pub price_per_pixel: f64,
    pub currency: Currency,
}

impl PixelPrice {
    /// `price_per_unit / pixels_per_unit`; both must be finite, the price not negative and
    /// the unit positive, or the quote means nothing.
    pub fn from_unit(
        price_per_unit: f64,
        pixels_per_unit: f64,
        currency: Currency,
    ) -> Result<Self, String> {
        if !price_per_unit.is_finite() || price_per_unit < 0.0 {
            return Err(format!(
                "price_per_unit must be a number >= 0, not {price_per_unit}"
            ));
        }
        if !pixels_per_unit.is_finite() || pixels_per_unit <= 0.0 {
            return Err(format!(
                "pixels_per_unit must be a number > 0, not {pixels_per_unit}"
            ));
        }
        Ok(Self {
            price_per_pixel: price_per_unit / pixels_per_unit,
            currency,
        })
    }

    /// What a job of `pixels` input pixels costs at this price.
    pub fn fee(&self, pixels: u64) -> f64 {
        self.price_per_pixel * pixels as f64
    }

    /// Whether this price is acceptable under the maximum `max`: same currency, not above.
    pub fn within(&self, max: &PixelPrice) -> bool {
        self.currency == max.currency && self.price_per_pixel <= max.price_per_pixel
    }
}

/// A price as written in a config: `{"price_per_unit", "pixels_per_unit", "currency"}`.
#[derive(Debug, Clone, Deserialize)]
pub struct UnitPrice {
    pub price_per_unit: Number,
    #[serde(default = "one")]
    pub pixels_per_unit: Number,
    #[serde(default)]
    pub currency: Currency,
}

impl UnitPrice {
    pub fn per_pixel(&self) -> Result<PixelPrice, String> {
        PixelPrice::from_unit(self.price_per_unit.0, self.pixels_per_unit.0, self.currency)
    }
}

fn one() -> Number {
    Number(1.0)
}

/// A number written either as a JSON number or as a string holding one (go-livepeer
/// accepts both, and big wei amounts are often quoted).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Number(pub f64);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_string(d).map(Self)
    }
}

/// A JSON number, or a string holding one (Go's `json.Number` accepts both).
pub(crate) fn number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(f64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Num(n) => Ok(n),
        Raw::Text(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("'{s}' is not a number"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_per_pixel_is_the_unit_price_over_the_unit() {
        let p: UnitPrice = serde_json::from_str(
            r#"{"price_per_unit": "4768371", "pixels_per_unit": 2, "currency": "usd"}"#,
        )
        .unwrap();
        let p = p.per_pixel().unwrap();
        assert_eq!(p.price_per_pixel, 2384185.5);
        assert_eq!(p.currency, Currency::Usd);
        assert_eq!(p.fee(4), 9536742.0);
        let wei: UnitPrice = serde_json::from_str(r#"{"price_per_unit": 3}"#).unwrap();
        assert_eq!(wei.per_pixel().unwrap().currency, Currency::Wei);
    }

    #[test]
    fn bad_prices_are_refused_with_the_reason() {
        assert!(PixelPrice::from_unit(1.0, 0.0, Currency::Usd)
            .unwrap_err()
            .contains("pixels_per_unit"));
        assert!(PixelPrice::from_unit(-1.0, 1.0, Currency::Usd)
            .unwrap_err()
            .contains("price_per_unit"));
        let e = serde_json::from_str::<UnitPrice>(r#"{"price_per_unit": 1, "currency": "eth"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unknown currency 'eth'"), "{e}");
    }

    #[test]
    fn prices_in_another_currency_are_never_within_a_maximum() {
        let max = PixelPrice::from_unit(10.0, 1.0, Currency::Usd).unwrap();
        assert!(PixelPrice::from_unit(10.0, 1.0, Currency::Usd)
            .unwrap()
            .within(&max));
        assert!(!PixelPrice::from_unit(11.0, 1.0, Currency::Usd)
            .unwrap()
            .within(&max));
        assert!(!PixelPrice::from_unit(1.0, 1.0, Currency::Wei)
            .unwrap()
            .within(&max));
    }
}
