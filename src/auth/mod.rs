//! Who may call the order API: API keys ([`keys`]: the key, its record,
//! the file every instance reads) and the check each protected request
//! passes ([`ring`]: known, unrevoked, a role that may do what is asked,
//! within the key's limits). The HTTP side (the bearer scheme, the `401`,
//! `403` and `429` answers) is `api::auth`'s.

pub mod keys;
pub mod ring;

pub use keys::{Key, KeyFile, KeyFileError, KeyRecord, Role};
pub use ring::{Caller, Denied, Keyring};
