//! enforce (in progress)
