//! What passes between the stages about changes: the chunks the plan cuts
//! CHANGES into ([`chunk`]), one change as read from its text ([`change`]), its
//! compact recorded form ([`record`]), why a change is rejected ([`reject`]),
//! and which merge partition a recorded change goes to ([`partition`]).

pub mod change;
pub mod chunk;
pub mod partition;
pub mod record;
pub mod reject;
