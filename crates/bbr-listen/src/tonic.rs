//! tonic serves a [`Guarded`] or [`ReadAhead`] connection as it serves the
//! one inside.

use tonic::transport::server::Connected;

use crate::{Guarded, ReadAhead};

impl<IO: Connected> Connected for Guarded<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.get_ref().connect_info()
    }
}

impl<IO: Connected> Connected for ReadAhead<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.get_ref().connect_info()
    }
}
