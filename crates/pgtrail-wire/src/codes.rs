//! Message codes: what each tagged message is, decided here once.
//!
//! The same byte means different things on each side (`D` is Describe from a client and
//! DataRow from a server), so there are two enums. Each code owns the facts about its
//! message that the rest of pgtrail needs: whether it carries user data (and so gets the
//! large size limit), whether a proxy that records statements must read its body, and
//! whether it can complete a statement. Unknown bytes are `None`: a proxy forwards such a
//! frame unread and lets PostgreSQL answer it.

/// A message a client sends after the startup packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrontendCode {
    Query = b'Q',
    Parse = b'P',
    Bind = b'B',
    Describe = b'D',
    Execute = b'E',
    Close = b'C',
    Sync = b'S',
    Flush = b'H',
    CopyData = b'd',
    CopyDone = b'c',
    CopyFail = b'f',
    FunctionCall = b'F',
    /// PasswordMessage, SASLInitialResponse, SASLResponse, GSSResponse: all `p`.
    AuthResponse = b'p',
    Terminate = b'X',
}

impl FrontendCode {
    #[cfg(test)]
    const ALL: [FrontendCode; 14] = [
        Self::Query,
        Self::Parse,
        Self::Bind,
        Self::Describe,
        Self::Execute,
        Self::Close,
        Self::Sync,
        Self::Flush,
        Self::CopyData,
        Self::CopyDone,
        Self::CopyFail,
        Self::FunctionCall,
        Self::AuthResponse,
        Self::Terminate,
    ];

    /// The code of a tag byte; `None` for a byte no client message uses. A match (a jump
    /// table), not a search: it runs for every frame.
    pub fn from_tag(tag: u8) -> Option<Self> {
        Some(match tag {
            b'Q' => Self::Query,
            b'P' => Self::Parse,
            b'B' => Self::Bind,
            b'D' => Self::Describe,
            b'E' => Self::Execute,
            b'C' => Self::Close,
            b'S' => Self::Sync,
            b'H' => Self::Flush,
            b'd' => Self::CopyData,
            b'c' => Self::CopyDone,
            b'f' => Self::CopyFail,
            b'F' => Self::FunctionCall,
            b'p' => Self::AuthResponse,
            b'X' => Self::Terminate,
            _ => return None,
        })
    }

    pub fn tag(self) -> u8 {
        self as u8
    }

    /// Statement text, parameters, COPY data or function arguments: the large limit.
    pub fn carries_user_data(self) -> bool {
        matches!(self, Self::Query | Self::Parse | Self::Bind | Self::CopyData | Self::FunctionCall)
    }

    /// Whether a proxy that records statements reads the body: everything that starts,
    /// names or ends a statement. COPY data is forwarded unread. Flush has no body, but a
    /// refused batch drops it whole, so it is seen too.
    pub fn needs_body(self) -> bool {
        matches!(
            self,
            Self::Query
                | Self::Parse
                | Self::Bind
                | Self::Execute
                | Self::Describe
                | Self::Close
                | Self::Sync
                | Self::FunctionCall
                | Self::Terminate
                | Self::Flush
        )
    }

    /// Part of an extended-protocol batch (up to its Sync): refused as a whole.
    pub fn is_extended(self) -> bool {
        matches!(self, Self::Parse | Self::Bind | Self::Execute | Self::Describe | Self::Close | Self::Flush)
    }
}

/// A message a server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BackendCode {
    Authentication = b'R',
    BackendKeyData = b'K',
    ParameterStatus = b'S',
    ReadyForQuery = b'Z',
    RowDescription = b'T',
    DataRow = b'D',
    CommandComplete = b'C',
    EmptyQueryResponse = b'I',
    ErrorResponse = b'E',
    NoticeResponse = b'N',
    NotificationResponse = b'A',
    ParseComplete = b'1',
    BindComplete = b'2',
    CloseComplete = b'3',
    ParameterDescription = b't',
    NoData = b'n',
    PortalSuspended = b's',
    CopyInResponse = b'G',
    CopyOutResponse = b'H',
    CopyBothResponse = b'W',
    CopyData = b'd',
    CopyDone = b'c',
    FunctionCallResponse = b'V',
    NegotiateProtocolVersion = b'v',
}

impl BackendCode {
    #[cfg(test)]
    const ALL: [BackendCode; 24] = [
        Self::Authentication,
        Self::BackendKeyData,
        Self::ParameterStatus,
        Self::ReadyForQuery,
        Self::RowDescription,
        Self::DataRow,
        Self::CommandComplete,
        Self::EmptyQueryResponse,
        Self::ErrorResponse,
        Self::NoticeResponse,
        Self::NotificationResponse,
        Self::ParseComplete,
        Self::BindComplete,
        Self::CloseComplete,
        Self::ParameterDescription,
        Self::NoData,
        Self::PortalSuspended,
        Self::CopyInResponse,
        Self::CopyOutResponse,
        Self::CopyBothResponse,
        Self::CopyData,
        Self::CopyDone,
        Self::FunctionCallResponse,
        Self::NegotiateProtocolVersion,
    ];

    /// The code of a tag byte; `None` for a byte no server message uses. A match, not a
    /// search: it runs for every frame, every DataRow included.
    pub fn from_tag(tag: u8) -> Option<Self> {
        Some(match tag {
            b'R' => Self::Authentication,
            b'K' => Self::BackendKeyData,
            b'S' => Self::ParameterStatus,
            b'Z' => Self::ReadyForQuery,
            b'T' => Self::RowDescription,
            b'D' => Self::DataRow,
            b'C' => Self::CommandComplete,
            b'I' => Self::EmptyQueryResponse,
            b'E' => Self::ErrorResponse,
            b'N' => Self::NoticeResponse,
            b'A' => Self::NotificationResponse,
            b'1' => Self::ParseComplete,
            b'2' => Self::BindComplete,
            b'3' => Self::CloseComplete,
            b't' => Self::ParameterDescription,
            b'n' => Self::NoData,
            b's' => Self::PortalSuspended,
            b'G' => Self::CopyInResponse,
            b'H' => Self::CopyOutResponse,
            b'W' => Self::CopyBothResponse,
            b'd' => Self::CopyData,
            b'c' => Self::CopyDone,
            b'V' => Self::FunctionCallResponse,
            b'v' => Self::NegotiateProtocolVersion,
            _ => return None,
        })
    }

    pub fn tag(self) -> u8 {
        self as u8
    }

    /// Result rows, COPY data and function results: the large limit.
    pub fn carries_user_data(self) -> bool {
        matches!(self, Self::DataRow | Self::CopyData | Self::FunctionCallResponse)
    }

    /// Whether a proxy that records statements reads the body: completions, errors,
    /// parameter changes, the transaction status and parameter types. Rows are counted
    /// from their tags alone.
    pub fn needs_body(self) -> bool {
        matches!(
            self,
            Self::CommandComplete
                | Self::ErrorResponse
                | Self::ParameterStatus
                | Self::ReadyForQuery
                | Self::ParameterDescription
        )
    }
}

/// The transaction status a ReadyForQuery carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TransactionStatus {
    /// Not in a transaction block.
    Idle = b'I',
    /// In a transaction block.
    InBlock = b'T',
    /// In a failed transaction block (statements are refused until it ends).
    Failed = b'E',
}

impl TransactionStatus {
    pub fn from_byte(byte: u8) -> Option<Self> {
        [Self::Idle, Self::InBlock, Self::Failed].into_iter().find(|s| *s as u8 == byte)
    }

    pub fn byte(self) -> u8 {
        self as u8
    }

    /// A transaction block is open (failed or not): ending the session rolls it back.
    pub fn in_transaction(self) -> bool {
        !matches!(self, Self::Idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_tag_and_tags_are_unique() {
        for code in FrontendCode::ALL {
            assert_eq!(FrontendCode::from_tag(code.tag()), Some(code));
        }
        for code in BackendCode::ALL {
            assert_eq!(BackendCode::from_tag(code.tag()), Some(code));
        }
        let mut tags: Vec<u8> = FrontendCode::ALL.iter().map(|c| c.tag()).collect();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), FrontendCode::ALL.len());
        assert_eq!(FrontendCode::from_tag(b'Z'), None);
        // Every byte the matches accept maps back to itself, and only the listed codes do.
        for byte in 0..=u8::MAX {
            if let Some(code) = FrontendCode::from_tag(byte) {
                assert!(code.tag() == byte && FrontendCode::ALL.contains(&code));
            }
            if let Some(code) = BackendCode::from_tag(byte) {
                assert!(code.tag() == byte && BackendCode::ALL.contains(&code));
            }
        }
        assert_eq!(BackendCode::from_tag(b'Q'), None);
    }

    /// The codes agree with the message types: each tag the decoders accept has a code.
    #[test]
    fn the_decoders_know_every_code() {
        use bytes::Bytes;
        for code in FrontendCode::ALL {
            let parsed = crate::FrontendMessage::parse(code.tag(), Bytes::new());
            // An empty body may be too short; what matters is that the tag is not unknown.
            if let Err(e) = parsed {
                assert!(!matches!(e, crate::WireError::UnknownTag { .. }), "{code:?}: {e}");
            }
        }
        for code in BackendCode::ALL {
            if let Err(e) = crate::BackendMessage::parse(code.tag(), Bytes::new()) {
                assert!(!matches!(e, crate::WireError::UnknownTag { .. }), "{code:?}: {e}");
            }
        }
    }
}
