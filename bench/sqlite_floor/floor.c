// The SQLite floor of one ledger row: the gateway's schema (its own
// database file), WAL, synchronous FULL (sqlx's default), 500-row
// transactions of 50-row INSERT statements prepared once with 32 `?` each,
// as src/ledger/schema.rs writes them. Prints CPU (user+sys) per row.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include "sqlite3.h"
#define COLS 32
#define PER_STMT 50
static int PER_TX=500;
static double cpu(void){struct rusage u;getrusage(RUSAGE_SELF,&u);return u.ru_utime.tv_sec+u.ru_utime.tv_usec/1e6+u.ru_stime.tv_sec+u.ru_stime.tv_usec/1e6;}
static void ck(int rc, sqlite3*db, const char*w){ if(rc!=SQLITE_OK&&rc!=SQLITE_DONE&&rc!=SQLITE_ROW){fprintf(stderr,"%s: %s\n",w,sqlite3_errmsg(db));exit(1);} }
int main(int argc,char**argv){
  int rows = argc>2?atoi(argv[2]):100000; if(getenv("PER_TX")) PER_TX=atoi(getenv("PER_TX"));
  sqlite3*db; ck(sqlite3_open(argv[1],&db),db,"open");
  ck(sqlite3_exec(db,"PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON;",0,0,0),db,"pragma"); if(argc>3) ck(sqlite3_exec(db,argv[3],0,0,0),db,"extra");
  const char*head="INSERT INTO usage_log (request_id, ts_ms, username, token_id, route, model, stream, status, upstream_status, error_code, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, completion_tokens_estimated, latency_ms, ttfb_ms, bytes_in, bytes_out, client_ip, outcome, format, requested_model, cache_miss_tokens, billable, key_id, upstream, attempts, charged_tokens, cost_micros, cost_estimated, currency) VALUES ";
  char*sql=malloc(strlen(head)+PER_STMT*COLS*4+64); strcpy(sql,head);
  for(int r=0;r<PER_STMT;r++){ strcat(sql,r?", (":"("); for(int c=0;c<COLS;c++) strcat(sql,c?", ?":"?"); strcat(sql,")"); }
  sqlite3_stmt*st; ck(sqlite3_prepare_v2(db,sql,-1,&st,0),db,"prepare");
  char id[40], user[16], tok[40];
  double t0=cpu(); long long ts=1796300000000LL;
  for(int done=0; done<rows; ){
    ck(sqlite3_exec(db,"BEGIN",0,0,0),db,"begin");
    for(int s=0;s<PER_TX/PER_STMT;s++){
      for(int r=0;r<PER_STMT;r++,done++){
        int b=r*COLS+1;
        snprintf(id,sizeof id,"%032x",(unsigned)(done*2654435761u)); snprintf(user,sizeof user,"user%d",done%1000); snprintf(tok,sizeof tok,"%032x",done%1000);
        sqlite3_bind_text(st,b+0,id,-1,SQLITE_TRANSIENT); sqlite3_bind_int64(st,b+1,ts+done);
        sqlite3_bind_text(st,b+2,user,-1,SQLITE_TRANSIENT); sqlite3_bind_text(st,b+3,tok,-1,SQLITE_TRANSIENT);
        sqlite3_bind_text(st,b+4,"chat",-1,SQLITE_STATIC); sqlite3_bind_text(st,b+5,"deepseek-flash",-1,SQLITE_STATIC);
        sqlite3_bind_int64(st,b+6,0); sqlite3_bind_int64(st,b+7,200); sqlite3_bind_int64(st,b+8,200); sqlite3_bind_null(st,b+9);
        for(int k=10;k<15;k++) sqlite3_bind_int64(st,b+k,11+k); sqlite3_bind_null(st,b+14);
        sqlite3_bind_double(st,b+15,0.42); sqlite3_bind_double(st,b+16,0.21); sqlite3_bind_int64(st,b+17,150); sqlite3_bind_int64(st,b+18,900);
        sqlite3_bind_text(st,b+19,"127.0.0.1",-1,SQLITE_STATIC); sqlite3_bind_text(st,b+20,"completed",-1,SQLITE_STATIC);
        sqlite3_bind_text(st,b+21,"chat",-1,SQLITE_STATIC); sqlite3_bind_null(st,b+22); sqlite3_bind_int64(st,b+23,11);
        sqlite3_bind_int64(st,b+24,1); sqlite3_bind_null(st,b+25); sqlite3_bind_text(st,b+26,"deepseek",-1,SQLITE_STATIC);
        sqlite3_bind_int64(st,b+27,1); sqlite3_bind_int64(st,b+28,32); sqlite3_bind_int64(st,b+29,60); sqlite3_bind_int64(st,b+30,0);
        sqlite3_bind_text(st,b+31,"CNY",-1,SQLITE_STATIC);
      }
      ck(sqlite3_step(st),db,"step"); sqlite3_reset(st);
    }
    ck(sqlite3_exec(db,"COMMIT",0,0,0),db,"commit");
  }
  double t=cpu()-t0;
  printf("rows %d cpu %.3f s = %.2f us/row\n",rows,t,t*1e6/rows);
  return 0;
}
