//! The shared suite on MariaDB/MySQL (being written).
