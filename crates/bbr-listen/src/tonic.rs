//! tonic serves a [`Guarded`] connection as it serves the one inside.

use tonic::transport::server::Connected;

use crate::Guarded;

impl<IO: Connected> Connected for Guarded<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.get_ref().connect_info()
    }
}
