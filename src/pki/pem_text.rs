//! PEM text as kacme reads it.

use super::PkiError;

/// The PEM blocks of a text, as (label, DER) pairs; text outside blocks is ignored.
pub(crate) fn pem_blocks(text: &str) -> Result<Vec<(String, Vec<u8>)>, PkiError> {
    pem::parse_many(text)
        .map(|blocks| blocks.into_iter().map(|b| (b.tag().to_string(), b.into_contents())).collect())
        .map_err(|e| PkiError::ParsePem(e.to_string()))
}
