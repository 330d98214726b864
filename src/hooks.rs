//! Commands run around each snapshot (`hooks.pre-snapshot` / `hooks.post-snapshot`).
//! (Being written; see issue 5.)
